//! Realistic fake values from the `fake` crate (English locale).

use std::fmt::Write;

use fake::Fake;
use fake::faker::address::en::{CityName, CountryCode, CountryName, StateName};
use fake::faker::company::en::{CompanyName, Industry};
use fake::faker::internet::en::{IPv4, IPv6, MACAddress, SafeEmail, UserAgent, Username};
use fake::faker::lorem::en::{Sentence, Word};
use fake::faker::name::en::{FirstName, LastName, Name};
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde::Deserialize;

/// Which fake value a `type = "fake"` field produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FakeKind {
    /// `word-NN.example-suffix`, e.g. `quia-17.eu-west.internal`.
    Hostname,
    /// A dotted IPv4 address, e.g. `203.0.113.7`.
    Ipv4,
    /// An IPv6 address in its usual hex groups.
    Ipv6,
    /// A MAC address, six colon-separated hex pairs.
    Mac,
    /// A browser's `User-Agent` header value.
    UserAgent,
    /// A first name at a reserved example domain (`mary@example.org`), never a real mailbox.
    Email,
    /// A login name built from a first name, e.g. `mary42` or `mary_quia`.
    Username,
    /// A full personal name, first and last.
    Name,
    /// A personal first name.
    FirstName,
    /// A family name.
    LastName,
    /// A made-up, US-style city name, e.g. `Smithville`.
    City,
    /// A US state name.
    State,
    /// A country's English name.
    Country,
    /// A two-letter ISO 3166 country code.
    CountryCode,
    /// A made-up company name, e.g. `Smith LLC`.
    Company,
    /// An industry sector, e.g. `Computer Software`.
    Industry,
    /// One lorem ipsum word.
    Word,
    /// One lorem ipsum sentence of three to eight words.
    Sentence,
    /// A random (version 4 layout) UUID drawn from the field's seeded stream.
    Uuid,
    /// `/word/word/NNN` request paths.
    HttpPath,
    /// `GET`, `POST`, ... weighted towards `GET`.
    HttpMethod,
    /// `https://host.example/path`, with a query string now and then.
    Url,
    /// A domain name, e.g. `acme-lab.io`.
    Domain,
    /// One to three sentences of lorem ipsum.
    Lorem,
    /// A device vendor and model, e.g. `Sensirion SHT45`.
    DeviceModel,
    /// An HTTP status code (int64), weighted like real traffic: mostly 200.
    HttpStatus,
}

const SITES: [&str; 6] = [
    "eu-west",
    "eu-central",
    "us-east",
    "us-west",
    "ap-south",
    "ap-east",
];
const METHODS: [(&str, u32); 5] = [
    ("GET", 70),
    ("POST", 18),
    ("PUT", 6),
    ("DELETE", 4),
    ("PATCH", 2),
];

const TLDS: [&str; 6] = ["com", "io", "net", "org", "dev", "example"];
const DEVICES: [(&str, &[&str]); 5] = [
    ("Sensirion", &["SHT45", "SCD41", "SPS30"]),
    ("Bosch", &["BME680", "BMP390"]),
    ("Raspberry Pi", &["4 Model B", "5", "Zero 2 W"]),
    ("Siemens", &["S7-1200", "S7-1500"]),
    ("Advantech", &["UNO-2271G", "WISE-4050"]),
];
/// HTTP status codes with the weights of a healthy web service.
pub const HTTP_STATUSES: [(i64, u32); 10] = [
    (200, 820),
    (201, 30),
    (204, 20),
    (301, 15),
    (304, 40),
    (400, 15),
    (401, 10),
    (404, 35),
    (500, 10),
    (503, 5),
];

/// One value of `table`, drawn with its weights (one draw from the generator).
fn weighted<T: Copy>(rng: &mut Xoshiro256PlusPlus, table: &[(T, u32)]) -> Option<T> {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for &(value, w) in table {
        if pick < w {
            return Some(value);
        }
        pick -= w;
    }
    None
}

impl FakeKind {
    /// An HTTP status code drawn with [`HTTP_STATUSES`]' weights.
    pub fn http_status(rng: &mut Xoshiro256PlusPlus) -> i64 {
        weighted(rng, &HTTP_STATUSES).unwrap_or(200)
    }

    /// Whether values are integers rather than strings.
    pub fn is_int(self) -> bool {
        self == FakeKind::HttpStatus
    }

    /// Append one value to `out`, drawing from `rng`.
    pub fn write(self, rng: &mut Xoshiro256PlusPlus, out: &mut String) {
        let s: String = match self {
            FakeKind::Hostname => {
                let w: String = Word().fake_with_rng(rng);
                let n: u32 = rng.random_range(1..100);
                let site = SITES[rng.random_range(0..SITES.len())];
                let _ = write!(out, "{w}-{n:02}.{site}.internal");
                return;
            }
            FakeKind::Ipv4 => IPv4().fake_with_rng(rng),
            FakeKind::Ipv6 => IPv6().fake_with_rng(rng),
            FakeKind::Mac => MACAddress().fake_with_rng(rng),
            FakeKind::UserAgent => UserAgent().fake_with_rng(rng),
            FakeKind::Email => SafeEmail().fake_with_rng(rng),
            FakeKind::Username => Username().fake_with_rng(rng),
            FakeKind::Name => Name().fake_with_rng(rng),
            FakeKind::FirstName => FirstName().fake_with_rng(rng),
            FakeKind::LastName => LastName().fake_with_rng(rng),
            FakeKind::City => CityName().fake_with_rng(rng),
            FakeKind::State => StateName().fake_with_rng(rng),
            FakeKind::Country => CountryName().fake_with_rng(rng),
            FakeKind::CountryCode => CountryCode().fake_with_rng(rng),
            FakeKind::Company => CompanyName().fake_with_rng(rng),
            FakeKind::Industry => Industry().fake_with_rng(rng),
            FakeKind::Word => Word().fake_with_rng(rng),
            FakeKind::Sentence => Sentence(3..9).fake_with_rng(rng),
            FakeKind::Uuid => {
                let hi: u64 = rng.random();
                let lo: u64 = rng.random();
                // Set the version (4) and variant (10xx) bits.
                let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
                let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
                let _ = write!(
                    out,
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    hi >> 32,
                    (hi >> 16) & 0xffff,
                    hi & 0xffff,
                    lo >> 48,
                    lo & 0xffff_ffff_ffff
                );
                return;
            }
            FakeKind::HttpPath => {
                let a: String = Word().fake_with_rng(rng);
                let b: String = Word().fake_with_rng(rng);
                let id: u32 = rng.random_range(1..10_000);
                let _ = write!(out, "/{a}/{b}/{id}");
                return;
            }
            FakeKind::Domain | FakeKind::Url => {
                let a: String = Word().fake_with_rng(rng);
                let b: String = Word().fake_with_rng(rng);
                let tld = TLDS[rng.random_range(0..TLDS.len())];
                if self == FakeKind::Domain {
                    let _ = write!(out, "{a}-{b}.{tld}");
                    return;
                }
                let p: String = Word().fake_with_rng(rng);
                let id: u32 = rng.random_range(1..100_000);
                let _ = write!(out, "https://{a}-{b}.{tld}/{p}/{id}");
                if rng.random_range(0..4) == 0 {
                    let q: String = Word().fake_with_rng(rng);
                    let _ = write!(out, "?q={q}");
                }
                return;
            }
            FakeKind::Lorem => {
                let n = rng.random_range(1..4);
                for i in 0..n {
                    if i > 0 {
                        out.push(' ');
                    }
                    let s: String = Sentence(4..12).fake_with_rng(rng);
                    out.push_str(&s);
                }
                return;
            }
            FakeKind::DeviceModel => {
                let (vendor, models) = DEVICES[rng.random_range(0..DEVICES.len())];
                let model = models[rng.random_range(0..models.len())];
                let _ = write!(out, "{vendor} {model}");
                return;
            }
            FakeKind::HttpStatus => {
                let _ = write!(out, "{}", Self::http_status(rng));
                return;
            }
            FakeKind::HttpMethod => {
                out.push_str(weighted(rng, &METHODS).unwrap_or("GET"));
                return;
            }
        };
        out.push_str(&s);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn values_look_right_and_are_seeded() {
        let mut a = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut b = Xoshiro256PlusPlus::seed_from_u64(1);
        for kind in [
            FakeKind::Hostname,
            FakeKind::Ipv4,
            FakeKind::Uuid,
            FakeKind::Email,
            FakeKind::HttpMethod,
            FakeKind::Url,
            FakeKind::Lorem,
            FakeKind::DeviceModel,
        ] {
            let (mut x, mut y) = (String::new(), String::new());
            kind.write(&mut a, &mut x);
            kind.write(&mut b, &mut y);
            assert_eq!(x, y);
            match kind {
                FakeKind::Ipv4 => assert_eq!(x.split('.').count(), 4, "{x}"),
                FakeKind::Uuid => {
                    assert_eq!(x.len(), 36, "{x}");
                    assert_eq!(&x[14..15], "4", "{x}");
                }
                FakeKind::Email => assert!(x.contains('@'), "{x}"),
                FakeKind::Hostname => assert!(x.ends_with(".internal"), "{x}"),
                FakeKind::Url => assert!(x.starts_with("https://"), "{x}"),
                _ => assert!(!x.is_empty()),
            }
        }
    }
}
