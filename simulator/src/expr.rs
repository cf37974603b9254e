//! Derived fields: a small, typed expression language over a row's other fields.
//!
//! ```text
//! temp_f = { type = "expr", expr = "temp * 9 / 5 + 32" }
//! alert  = { type = "expr", expr = "if(cpu > 90 && !maintenance, 'page', 'ok')" }
//! ```
//!
//! Operators (by precedence, loosest first): `||`, `&&`, comparisons (`==` `!=` `<` `<=`
//! `>` `>=`), `+ -`, `* / %`, unary `- !`. Functions: `abs min max round floor ceil sqrt
//! ln exp pow clamp if concat str int float hour weekday`. Types are checked when the
//! scenario loads: every expression has one result type (int64, float64, boolean, utf8 or
//! timestamp), so its column has one Arrow type.

use std::fmt;

/// A value while evaluating one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// Microseconds since the Unix epoch, UTC.
    Time(i64),
}

/// The type of a value or an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Int,
    Float,
    Bool,
    Str,
    Time,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Int => "int64",
            Type::Float => "float64",
            Type::Bool => "boolean",
            Type::Str => "string",
            Type::Time => "timestamp",
        })
    }
}

impl Type {
    fn numeric(self) -> bool {
        matches!(self, Type::Int | Type::Float)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Abs,
    Min,
    Max,
    Round,
    Floor,
    Ceil,
    Sqrt,
    Ln,
    Exp,
    Pow,
    Clamp,
    If,
    Concat,
    Str,
    Int,
    Float,
    Hour,
    Weekday,
}

impl Func {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "abs" => Func::Abs,
            "min" => Func::Min,
            "max" => Func::Max,
            "round" => Func::Round,
            "floor" => Func::Floor,
            "ceil" => Func::Ceil,
            "sqrt" => Func::Sqrt,
            "ln" => Func::Ln,
            "exp" => Func::Exp,
            "pow" => Func::Pow,
            "clamp" => Func::Clamp,
            "if" => Func::If,
            "concat" => Func::Concat,
            "str" => Func::Str,
            "int" => Func::Int,
            "float" => Func::Float,
            "hour" => Func::Hour,
            "weekday" => Func::Weekday,
            _ => return None,
        })
    }
}

/// A type-checked expression; `Field(i)` reads input `i` of the row.
#[derive(Debug, Clone)]
enum Node {
    Lit(Value),
    Field(usize),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// A compiled expression: its result type and the fields it reads, in input order.
#[derive(Debug, Clone)]
pub struct Expr {
    root: Node,
    ty: Type,
    inputs: Vec<String>,
}

impl Expr {
    /// Parse and type-check `text`; `field` gives the type of a field name, or none when
    /// there is no such field.
    pub fn compile(text: &str, field: &dyn Fn(&str) -> Option<Type>) -> Result<Self, String> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            inputs: Vec::new(),
            field,
        };
        let (root, ty) = p.expr()?;
        if p.pos != p.tokens.len() {
            return Err(format!("unexpected {} in {text:?}", p.tokens[p.pos]));
        }
        Ok(Expr {
            root,
            ty,
            inputs: p.inputs.into_iter().map(|(n, _)| n).collect(),
        })
    }

    pub fn ty(&self) -> Type {
        self.ty
    }

    /// Field names read, in the order `eval`'s `row` must hold them.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Evaluate for one row (the values of [`Expr::inputs`]). Arithmetic that has no
    /// answer (division by zero, `sqrt` of a negative) gives null.
    pub fn eval(&self, row: &[Value]) -> Option<Value> {
        eval(&self.root, row)
    }
}

fn eval(n: &Node, row: &[Value]) -> Option<Value> {
    use Value::*;
    Some(match n {
        Node::Lit(v) => v.clone(),
        Node::Field(i) => row.get(*i)?.clone(),
        Node::Neg(x) => match eval(x, row)? {
            Int(i) => Int(i.wrapping_neg()),
            Float(f) => Float(-f),
            _ => return None,
        },
        Node::Not(x) => match eval(x, row)? {
            Bool(b) => Bool(!b),
            _ => return None,
        },
        Node::Bin(BinOp::And, a, b) => Bool(as_bool(eval(a, row)?)? && as_bool(eval(b, row)?)?),
        Node::Bin(BinOp::Or, a, b) => Bool(as_bool(eval(a, row)?)? || as_bool(eval(b, row)?)?),
        Node::Bin(op, a, b) => binary(*op, eval(a, row)?, eval(b, row)?)?,
        Node::Call(f, args) => {
            if *f == Func::If {
                let c = as_bool(eval(&args[0], row)?)?;
                return eval(&args[if c { 1 } else { 2 }], row);
            }
            let vals = args
                .iter()
                .map(|a| eval(a, row))
                .collect::<Option<Vec<_>>>()?;
            call(*f, vals)?
        }
    })
}

fn as_bool(v: Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(b),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn finite(f: f64) -> Option<Value> {
    f.is_finite().then_some(Value::Float(f))
}

fn binary(op: BinOp, a: Value, b: Value) -> Option<Value> {
    use Value::*;
    if let (Int(x), Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        return Some(match op {
            BinOp::Add => Int(x.wrapping_add(y)),
            BinOp::Sub => Int(x.wrapping_sub(y)),
            BinOp::Mul => Int(x.wrapping_mul(y)),
            BinOp::Div => return finite(x as f64 / y as f64),
            BinOp::Rem => Int(x.checked_rem(y)?),
            _ => Bool(compare(op, x.cmp(&y))),
        });
    }
    match (&a, &b) {
        (Str(x), Str(y)) => Some(Bool(compare(op, x.cmp(y)))),
        (Bool(x), Bool(y)) => Some(Bool(compare(op, x.cmp(y)))),
        (Time(x), Time(y)) => Some(Bool(compare(op, x.cmp(y)))),
        _ => {
            let (x, y) = (as_f64(&a)?, as_f64(&b)?);
            match op {
                BinOp::Add => finite(x + y),
                BinOp::Sub => finite(x - y),
                BinOp::Mul => finite(x * y),
                BinOp::Div => finite(x / y),
                BinOp::Rem => finite(x % y),
                _ => Some(Bool(compare(op, x.partial_cmp(&y)?))),
            }
        }
    }
}

fn compare(op: BinOp, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Eq => o == Equal,
        BinOp::Ne => o != Equal,
        BinOp::Lt => o == Less,
        BinOp::Le => o != Greater,
        BinOp::Gt => o == Greater,
        BinOp::Ge => o != Less,
        _ => false,
    }
}

use super::calendar::{US_PER_DAY, US_PER_HOUR, weekday};

fn call(f: Func, v: Vec<Value>) -> Option<Value> {
    use Value::*;
    let num = |i: usize| as_f64(&v[i]);
    Some(match f {
        Func::Abs => match &v[0] {
            Int(i) => Int(i.wrapping_abs()),
            x => Float(as_f64(x)?.abs()),
        },
        Func::Min | Func::Max => match (&v[0], &v[1]) {
            (Int(a), Int(b)) => Int(if f == Func::Min { *a.min(b) } else { *a.max(b) }),
            _ => Float(if f == Func::Min {
                num(0)?.min(num(1)?)
            } else {
                num(0)?.max(num(1)?)
            }),
        },
        Func::Clamp => match (&v[0], &v[1], &v[2]) {
            (Int(x), Int(lo), Int(hi)) => Int((*x).max(*lo).min(*hi)),
            _ => Float(num(0)?.max(num(1)?).min(num(2)?)),
        },
        Func::Round => Float(num(0)?.round()),
        Func::Floor => Float(num(0)?.floor()),
        Func::Ceil => Float(num(0)?.ceil()),
        Func::Sqrt => return finite(num(0)?.sqrt()),
        Func::Ln => return finite(num(0)?.ln()),
        Func::Exp => return finite(num(0)?.exp()),
        Func::Pow => return finite(num(0)?.powf(num(1)?)),
        Func::Int => match &v[0] {
            Int(i) => Int(*i),
            Bool(b) => Int(i64::from(*b)),
            Time(t) => Int(*t),
            x => {
                let f = as_f64(x)?;
                if !f.is_finite() {
                    return None;
                }
                Int(f.trunc() as i64)
            }
        },
        Func::Float => Float(match &v[0] {
            Bool(b) => f64::from(u8::from(*b)),
            x => as_f64(x)?,
        }),
        Func::Str => Str(match &v[0] {
            Int(i) => i.to_string(),
            Float(f) => f.to_string(),
            Bool(b) => b.to_string(),
            Str(s) => s.clone(),
            Time(t) => chrono::DateTime::from_timestamp_micros(*t)?
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
        }),
        Func::Concat => {
            let mut out = String::new();
            for x in v {
                match call(Func::Str, vec![x])? {
                    Str(s) => out.push_str(&s),
                    _ => return None,
                }
            }
            Str(out)
        }
        Func::Hour => match v[0] {
            Time(t) => Int(t.rem_euclid(US_PER_DAY) / US_PER_HOUR),
            _ => return None,
        },
        Func::Weekday => match v[0] {
            Time(t) => Int(weekday(t)),
            _ => return None,
        },
        Func::If => return None, // evaluated lazily in `eval`
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(String),
    Str(String),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Num(n) => write!(f, "number {n}"),
            Token::Str(s) => write!(f, "string {s:?}"),
            Token::Ident(i) => write!(f, "{i:?}"),
            Token::Op(o) => write!(f, "`{o}`"),
            Token::LParen => f.write_str("`(`"),
            Token::RParen => f.write_str("`)`"),
            Token::Comma => f.write_str("`,`"),
        }
    }
}

const OPS: [&str; 16] = [
    "||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "=", "|",
];

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            out.push(Token::Num(chars[start..i].iter().collect()));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|x| *x == c)
                .ok_or_else(|| format!("unterminated string in {text:?}"))?;
            out.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c == '(' {
            out.push(Token::LParen);
            i += 1;
        } else if c == ')' {
            out.push(Token::RParen);
            i += 1;
        } else if c == ',' {
            out.push(Token::Comma);
            i += 1;
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = OPS
                .iter()
                .find(|o| rest.starts_with(**o))
                .ok_or_else(|| format!("unexpected character {c:?} in {text:?}"))?;
            if *op == "=" || *op == "|" {
                return Err(format!(
                    "unexpected {op:?} in {text:?} (did you mean {op}{op}?)"
                ));
            }
            out.push(Token::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    inputs: Vec<(String, Type)>,
    field: &'a dyn Fn(&str) -> Option<Type>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat_op(&mut self, ops: &[&'static str]) -> Option<&'static str> {
        match self.peek() {
            Some(Token::Op(o)) if ops.contains(o) => {
                let o = *o;
                self.pos += 1;
                Some(o)
            }
            // Words for the logical operators read better in TOML.
            Some(Token::Ident(w))
                if (w == "and" && ops.contains(&"&&")) || (w == "or" && ops.contains(&"||")) =>
            {
                let o = if w == "and" { "&&" } else { "||" };
                self.pos += 1;
                Some(o)
            }
            _ => None,
        }
    }

    fn expr(&mut self) -> Result<(Node, Type), String> {
        self.binary_level(0)
    }

    fn binary_level(&mut self, level: usize) -> Result<(Node, Type), String> {
        const LEVELS: [&[&str]; 5] = [
            &["||"],
            &["&&"],
            &["==", "!=", "<=", ">=", "<", ">"],
            &["+", "-"],
            &["*", "/", "%"],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let (mut left, mut lt) = self.binary_level(level + 1)?;
        while let Some(op) = self.eat_op(LEVELS[level]) {
            let (right, rt) = self.binary_level(level + 1)?;
            let (bin, ty) = check_binary(op, lt, rt)?;
            left = Node::Bin(bin, Box::new(left), Box::new(right));
            lt = ty;
            if level == 2 {
                // Comparisons do not chain: `a < b < c` is an error, not `(a < b) < c`.
                if self.eat_op(LEVELS[2]).is_some() {
                    return Err("comparisons cannot be chained; use &&".into());
                }
                break;
            }
        }
        Ok((left, lt))
    }

    fn unary(&mut self) -> Result<(Node, Type), String> {
        if self.eat_op(&["-"]).is_some() {
            let (n, t) = self.unary()?;
            if !t.numeric() {
                return Err(format!("cannot negate a {t}"));
            }
            return Ok((Node::Neg(Box::new(n)), t));
        }
        let not = match self.peek() {
            Some(Token::Op("!")) => true,
            Some(Token::Ident(w)) => w == "not",
            _ => false,
        };
        if not {
            self.pos += 1;
            let (n, t) = self.unary()?;
            if t != Type::Bool {
                return Err(format!("`!` needs a boolean, not a {t}"));
            }
            return Ok((Node::Not(Box::new(n)), Type::Bool));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<(Node, Type), String> {
        let tok = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| "expression ends too early".to_string())?;
        self.pos += 1;
        match tok {
            Token::Num(n) => {
                if let Ok(i) = n.parse::<i64>() {
                    Ok((Node::Lit(Value::Int(i)), Type::Int))
                } else {
                    let f: f64 = n.parse().map_err(|_| format!("bad number {n:?}"))?;
                    Ok((Node::Lit(Value::Float(f)), Type::Float))
                }
            }
            Token::Str(s) => Ok((Node::Lit(Value::Str(s)), Type::Str)),
            Token::LParen => {
                let e = self.expr()?;
                self.expect(Token::RParen)?;
                Ok(e)
            }
            Token::Ident(name) if name == "true" || name == "false" => {
                Ok((Node::Lit(Value::Bool(name == "true")), Type::Bool))
            }
            Token::Ident(name) if self.peek() == Some(&Token::LParen) => {
                self.pos += 1;
                let f =
                    Func::from_name(&name).ok_or_else(|| format!("unknown function {name:?}"))?;
                let mut args = Vec::new();
                if self.peek() != Some(&Token::RParen) {
                    loop {
                        args.push(self.expr()?);
                        if self.peek() == Some(&Token::Comma) {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(Token::RParen)?;
                let ty = check_call(f, &name, &args.iter().map(|a| a.1).collect::<Vec<_>>())?;
                Ok((Node::Call(f, args.into_iter().map(|a| a.0).collect()), ty))
            }
            Token::Ident(name) => {
                let ty = (self.field)(&name).ok_or_else(|| format!("no field named {name:?}"))?;
                let i = match self.inputs.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        self.inputs.push((name, ty));
                        self.inputs.len() - 1
                    }
                };
                Ok((Node::Field(i), ty))
            }
            t => Err(format!("unexpected {t}")),
        }
    }

    fn expect(&mut self, t: Token) -> Result<(), String> {
        match self.peek() {
            Some(x) if *x == t => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(format!("expected {t}, found {x}")),
            None => Err(format!("expected {t} at the end")),
        }
    }
}

fn check_binary(op: &str, a: Type, b: Type) -> Result<(BinOp, Type), String> {
    let bin = match op {
        "||" => BinOp::Or,
        "&&" => BinOp::And,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        _ => BinOp::Rem,
    };
    let bad = || Err(format!("`{op}` cannot combine a {a} and a {b}"));
    let ty = match bin {
        BinOp::Or | BinOp::And if a == Type::Bool && b == Type::Bool => Type::Bool,
        BinOp::Or | BinOp::And => return bad(),
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
            if a == b || (a.numeric() && b.numeric()) =>
        {
            Type::Bool
        }
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => return bad(),
        BinOp::Div if a.numeric() && b.numeric() => Type::Float,
        _ if a == Type::Int && b == Type::Int => Type::Int,
        _ if a.numeric() && b.numeric() => Type::Float,
        _ => return bad(),
    };
    Ok((bin, ty))
}

fn check_call(f: Func, name: &str, args: &[Type]) -> Result<Type, String> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{name}() takes {n} arguments, not {}", args.len()))
        }
    };
    let numeric = |i: usize| {
        if args[i].numeric() {
            Ok(())
        } else {
            Err(format!("{name}() needs numbers, not a {}", args[i]))
        }
    };
    let all_int = args.iter().all(|t| *t == Type::Int);
    Ok(match f {
        Func::Abs => {
            arity(1)?;
            numeric(0)?;
            args[0]
        }
        Func::Min | Func::Max | Func::Pow => {
            arity(2)?;
            numeric(0)?;
            numeric(1)?;
            if all_int && f != Func::Pow {
                Type::Int
            } else {
                Type::Float
            }
        }
        Func::Clamp => {
            arity(3)?;
            (0..3).try_for_each(numeric)?;
            if all_int { Type::Int } else { Type::Float }
        }
        Func::Round | Func::Floor | Func::Ceil | Func::Sqrt | Func::Ln | Func::Exp => {
            arity(1)?;
            numeric(0)?;
            Type::Float
        }
        Func::If => {
            arity(3)?;
            if args[0] != Type::Bool {
                return Err(format!("if() needs a boolean condition, not a {}", args[0]));
            }
            if args[1] == args[2] {
                args[1]
            } else if args[1].numeric() && args[2].numeric() {
                Type::Float
            } else {
                return Err(format!(
                    "if() branches have different types: {} and {}",
                    args[1], args[2]
                ));
            }
        }
        Func::Concat => {
            if args.is_empty() {
                return Err("concat() needs arguments".into());
            }
            Type::Str
        }
        Func::Str => {
            arity(1)?;
            Type::Str
        }
        Func::Int => {
            arity(1)?;
            if args[0] == Type::Str {
                return Err("int() cannot convert a string".into());
            }
            Type::Int
        }
        Func::Float => {
            arity(1)?;
            if !(args[0].numeric() || args[0] == Type::Bool) {
                return Err(format!("float() cannot convert a {}", args[0]));
            }
            Type::Float
        }
        Func::Hour | Func::Weekday => {
            arity(1)?;
            if args[0] != Type::Time {
                return Err(format!("{name}() needs a timestamp, not a {}", args[0]));
            }
            Type::Int
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &str) -> Option<Type> {
        match name {
            "temp" => Some(Type::Float),
            "n" => Some(Type::Int),
            "up" => Some(Type::Bool),
            "host" => Some(Type::Str),
            "ts" => Some(Type::Time),
            _ => None,
        }
    }

    fn run(text: &str, row: &[(&str, Value)]) -> Option<Value> {
        let e = Expr::compile(text, &fields).expect(text);
        let vals: Vec<Value> = e
            .inputs()
            .iter()
            .map(|i| row.iter().find(|(n, _)| n == i).expect("input").1.clone())
            .collect();
        e.eval(&vals)
    }

    #[test]
    fn arithmetic_precedence_and_types() {
        let row = [("temp", Value::Float(20.0)), ("n", Value::Int(7))];
        assert_eq!(run("temp * 9 / 5 + 32", &row), Some(Value::Float(68.0)));
        assert_eq!(run("n % 4 + 2 * 3", &row), Some(Value::Int(9)));
        assert_eq!(run("-(n - 10)", &row), Some(Value::Int(3)));
        assert_eq!(run("n / 2", &row), Some(Value::Float(3.5)));
        assert_eq!(run("n / 0", &row), None, "no answer is null");
        assert_eq!(run("clamp(n, 0, 5)", &row), Some(Value::Int(5)));
        assert_eq!(run("round(temp / 3)", &row), Some(Value::Float(7.0)));
        assert_eq!(
            Expr::compile("n + 1", &fields).expect("int").ty(),
            Type::Int
        );
        assert_eq!(
            Expr::compile("n + 1.5", &fields).expect("float").ty(),
            Type::Float
        );
    }

    #[test]
    fn logic_strings_and_time() {
        let row = [
            ("temp", Value::Float(95.0)),
            ("up", Value::Bool(true)),
            ("host", Value::Str("web-1".into())),
            // 2026-01-01T13:30:00Z, a Thursday.
            ("ts", Value::Time(1_767_274_200_000_000)),
        ];
        assert_eq!(
            run("if(temp > 90 && up, 'page', 'ok')", &row),
            Some(Value::Str("page".into()))
        );
        assert_eq!(
            run("not up or host == \"web-1\"", &row),
            Some(Value::Bool(true))
        );
        assert_eq!(
            run("concat(host, '/', 3)", &row),
            Some(Value::Str("web-1/3".into()))
        );
        assert_eq!(run("hour(ts)", &row), Some(Value::Int(13)));
        assert_eq!(run("weekday(ts)", &row), Some(Value::Int(3)));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |t: &str| Expr::compile(t, &fields).unwrap_err();
        assert!(err("tmp + 1").contains("no field named \"tmp\""));
        assert!(err("host + 1").contains("cannot combine a string and a int64"));
        assert!(err("if(temp, 1, 2)").contains("boolean condition"));
        assert!(err("1 < n < 3").contains("cannot be chained"));
        assert!(err("temp = 3").contains("did you mean =="));
        assert!(err("sqrt(1, 2)").contains("takes 1 arguments"));
        assert!(err("frob(1)").contains("unknown function"));
        assert!(err("(1 + 2").contains("expected `)`"));
        assert!(err("1 2").contains("unexpected number 2"));
    }
}
