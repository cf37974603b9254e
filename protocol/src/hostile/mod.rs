//! What an attacker would send, for attack tests and the fuzz harness (feature `hostile`).
//!
//! | file | job |
//! |---|---|
//! | `payloads.rs` | hand-made hostile IPC: a compression bomb, a buffer outside its body |
//! | `fuzz.rs` | a seeded mutator over a corpus of valid inputs, and the decoders it drives |

pub mod fuzz;
mod payloads;

pub use payloads::{buffer_outside_body, compression_bomb};
