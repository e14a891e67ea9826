//! A small fuzzing harness that runs under plain `cargo test` on stable Rust.
//!
//! A target is a function that takes any input and must not panic (nor hang: each target keeps
//! its own bound on time). [`fuzz`] runs it on every seed of its checked-in corpus
//! (`fuzz/corpus/<target>/`, one input per file; `*.hex` files hold bytes as hex), then on
//! `FUZZ_CASES` (default 256) inputs made by proptest: seeds mutated (bytes flipped, cut,
//! doubled, spliced with dictionary tokens and with each other) and random bytes. A failure
//! prints the smallest failing input proptest found, ready to be checked in as a seed.
//!
//! A longer run: `FUZZ_CASES=100000 cargo test --workspace fuzz_`.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

/// Inputs tried past the corpus when `FUZZ_CASES` is not set: enough to run in a second or two
/// per target inside the normal test command.
pub const DEFAULT_CASES: u32 = 256;

/// Tokens that matter to the gateway's parsers, spliced into seeds.
const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\n",
    "\r\n",
    "\n\n",
    "data: ",
    "data:",
    "event: ",
    "id: ",
    "retry: ",
    ": ping",
    "[DONE]",
    "\"type\"",
    "\"payload\"",
    "\"content\"",
    "\"id\"",
    "\"text\"",
    "\"delta\"",
    "\"choices\"",
    "\"index\"",
    "\"usage\"",
    "\"error\"",
    "\"candidates\"",
    "\"parts\"",
    "\"finishReason\"",
    "\"tool_calls\"",
    "\"arguments\"",
    "=",
    "[models.m]",
    "[providers.p]",
    "kind = \"openai\"",
    "\u{feff}",
    "é",
    "\u{10ffff}",
];

/// The seeds of `target`, from `fuzz/corpus/<target>/` (sorted by file name).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus at {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let raw = std::fs::read(&path).expect("corpus file reads");
            let bytes = if path.extension().is_some_and(|e| e == "hex") {
                from_hex(&raw).unwrap_or_else(|| panic!("{} is not hex", path.display()))
            } else {
                raw
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, bytes)
        })
        .collect()
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Hex digits (whitespace and `#` comments to the end of a line ignored) to bytes.
fn from_hex(text: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(text);
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect()
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
    InsertToken(usize, usize),
    /// Splices in a piece of another seed.
    Splice(usize, usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        (at, any::<u8>()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        (at, 1usize..16).prop_map(|(a, n)| Mutation::Delete(a, n)),
        at.prop_map(Mutation::Truncate),
        (at, 1usize..64).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (at, 0..DICTIONARY.len()).prop_map(|(a, t)| Mutation::InsertToken(a, t)),
        (at, any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(a, s, from, n)| Mutation::Splice(a, s, from, n)),
    ]
}

fn apply(mut input: Vec<u8>, mutations: &[Mutation], seeds: &[Vec<u8>]) -> Vec<u8> {
    for m in mutations {
        let len = input.len();
        let pos = |a: usize| if len == 0 { 0 } else { a % (len + 1) };
        match *m {
            Mutation::FlipBit(a, bit) if len > 0 => input[a % len] ^= 1 << bit,
            Mutation::SetByte(a, b) if len > 0 => input[a % len] = b,
            Mutation::Delete(a, n) if len > 0 => {
                let start = a % len;
                input.drain(start..(start + n).min(len));
            }
            Mutation::Truncate(a) => input.truncate(pos(a)),
            Mutation::Duplicate(a, n) if len > 0 => {
                let start = a % len;
                let piece = input[start..(start + n).min(len)].to_vec();
                let at = (start + piece.len()).min(input.len());
                input.splice(at..at, piece);
            }
            Mutation::InsertToken(a, t) => {
                let at = pos(a);
                input.splice(at..at, DICTIONARY[t].bytes());
            }
            Mutation::Splice(a, s, from, n) => {
                let other = &seeds[s % seeds.len()];
                if !other.is_empty() {
                    let start = from % other.len();
                    let piece = other[start..(start + n).min(other.len())].to_vec();
                    let at = pos(a);
                    input.splice(at..at, piece);
                }
            }
            _ => {}
        }
    }
    input
}

/// Inputs made from `seeds`: mostly mutated seeds, some random bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    let mutated = (0..count, prop::collection::vec(mutation(), 1..8))
        .prop_map(move |(i, ms)| apply(seeds[i].clone(), &ms, &seeds));
    prop_oneof![
        8 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `target` on its corpus, then on `FUZZ_CASES` inputs derived from it; panics (failing
/// the test) with the smallest input that made `target` panic.
pub fn fuzz(target: &str, run: impl Fn(&[u8])) {
    let seeds = corpus(target);
    for (name, input) in &seeds {
        if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
            panic!("fuzz target {target} panics on its seed {name}");
        }
    }
    let seeds: Vec<Vec<u8>> = seeds.into_iter().map(|(_, bytes)| bytes).collect();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&inputs(seeds), |input| {
        catch_unwind(AssertUnwindSafe(|| run(&input)))
            .map_err(|_| TestCaseError::fail("the target panicked"))
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => panic!(
            "fuzz target {target}: {why} on {:?}\n(as hex, for fuzz/corpus/{target}/NAME.hex: {})",
            String::from_utf8_lossy(&input),
            input.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        Err(e) => panic!("fuzz target {target}: {e}"),
    }
}

/// `input` as text, as a text frame or a file would give it: invalid UTF-8 replaced.
pub fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_seeds_decode() {
        assert_eq!(
            from_hex(b"81 02 # a comment\n 6869"),
            Some(vec![0x81, 2, b'h', b'i'])
        );
        assert_eq!(from_hex(b"8"), None);
    }

    #[test]
    fn mutations_stay_in_bounds() {
        let seeds = vec![b"abc".to_vec(), Vec::new()];
        let all = [
            Mutation::FlipBit(7, 3),
            Mutation::SetByte(100, 0),
            Mutation::Delete(2, 15),
            Mutation::Duplicate(1, 63),
            Mutation::InsertToken(99, 0),
            Mutation::Splice(5, 0, 7, 2),
            Mutation::Splice(0, 1, 0, 5),
            Mutation::Truncate(1),
        ];
        for seed in &seeds {
            apply(seed.clone(), &all, &seeds);
        }
    }
}
