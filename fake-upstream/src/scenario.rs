//! Scenarios: the requested model name says how the fake behaves.

/// Text pieces of an `ok` answer when the model name gives no count.
pub const DEFAULT_TEXT_PIECES: usize = 20;
/// Text pieces of a `slow-drip` answer.
pub const SLOW_DRIP_TEXT_PIECES: usize = 5;

/// How the fake answers, chosen by the model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `ok` or `ok-N`: reasoning pieces, then N text pieces (default [`DEFAULT_TEXT_PIECES`]).
    Ok { text_pieces: usize },
    /// `fail-NNN`: an HTTP error with status NNN in the provider's error shape (`fail-429` adds
    /// a retry hint of one second).
    Fail { status: u16 },
    /// `flaky-N`: 503 for the first N flaky requests this fake sees, then `ok`.
    Flaky { failures: u64 },
    /// `midstream-error`: a few pieces, then the provider's in-stream error event.
    MidstreamError,
    /// `stall`: response headers, then no event, forever (only SSE comments, see `body.rs`).
    Stall,
    /// `stall-after-N`: N pieces, then no event, forever.
    StallAfter { pieces: usize },
    /// `malformed`: a few pieces, then a line of invalid JSON, then the rest.
    Malformed,
    /// `cut`: a few pieces, then the TCP connection closes without the stream's terminator.
    Cut,
    /// `slow-drip`: an `ok` answer with [`crate::FakeOptions::slow_drip_delay_ms`] between pieces.
    SlowDrip,
    /// `filtered`: a few pieces, then the provider's content-filter finish reason.
    Filtered,
    /// `echo`: an `ok` answer whose text is the last user message's (OpenAI API only), so a
    /// test chooses what a page renders.
    Echo,
}

impl Scenario {
    /// The scenario a model name asks for; `None` for names the fake does not serve.
    pub fn from_model(model: &str) -> Option<Scenario> {
        let number = |prefix: &str| model.strip_prefix(prefix)?.parse::<u64>().ok();
        Some(match model {
            "ok" => Scenario::Ok {
                text_pieces: DEFAULT_TEXT_PIECES,
            },
            "midstream-error" => Scenario::MidstreamError,
            "stall" => Scenario::Stall,
            "malformed" => Scenario::Malformed,
            "cut" => Scenario::Cut,
            "slow-drip" => Scenario::SlowDrip,
            "filtered" => Scenario::Filtered,
            "echo" => Scenario::Echo,
            _ => {
                if let Some(n) = number("ok-") {
                    Scenario::Ok {
                        text_pieces: n as usize,
                    }
                } else if let Some(status) = number("fail-").filter(|s| (400..600).contains(s)) {
                    Scenario::Fail {
                        status: status as u16,
                    }
                } else if let Some(n) = number("flaky-") {
                    Scenario::Flaky { failures: n }
                } else if let Some(n) = number("stall-after-") {
                    Scenario::StallAfter { pieces: n as usize }
                } else {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_pick_scenarios() {
        assert_eq!(
            Scenario::from_model("ok"),
            Some(Scenario::Ok { text_pieces: 20 })
        );
        assert_eq!(
            Scenario::from_model("ok-3"),
            Some(Scenario::Ok { text_pieces: 3 })
        );
        assert_eq!(
            Scenario::from_model("fail-429"),
            Some(Scenario::Fail { status: 429 })
        );
        assert_eq!(
            Scenario::from_model("stall-after-4"),
            Some(Scenario::StallAfter { pieces: 4 })
        );
        assert_eq!(
            Scenario::from_model("flaky-2"),
            Some(Scenario::Flaky { failures: 2 })
        );
        assert_eq!(Scenario::from_model("fail-200"), None);
        assert_eq!(Scenario::from_model("gpt-4o"), None);
    }
}
