//! The process's open-file limit: every WebSocket session is a file, so a node that holds
//! thousands of sessions needs the soft limit raised to the hard one at start.

/// Below this hard limit a node cannot hold the ~19,000 sessions the benchmarks aim at.
pub const MIN_HARD_NOFILE: u64 = 20_000;

/// What [`raise_to_hard_limit`] did, logged once logging is set up.
#[derive(Debug, Clone, Copy)]
pub enum NofileLimit {
    Raised { from: u64, to: u64 },
    Unchanged { limit: u64 },
    Failed { soft: u64, errno: i32 },
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Call before anything opens files.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
pub fn raise_to_hard_limit() -> NofileLimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return NofileLimit::Failed {
                soft: 0,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            };
        }
        let from = lim.rlim_cur as u64;
        if lim.rlim_cur >= lim.rlim_max {
            return NofileLimit::Unchanged { limit: from };
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return NofileLimit::Failed {
                soft: from,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            };
        }
        NofileLimit::Raised {
            from,
            to: lim.rlim_cur as u64,
        }
    }
}

impl NofileLimit {
    /// The soft limit now in force.
    pub fn current(self) -> u64 {
        match self {
            NofileLimit::Raised { to, .. } => to,
            NofileLimit::Unchanged { limit } => limit,
            NofileLimit::Failed { soft, .. } => soft,
        }
    }

    pub fn log(self) {
        match self {
            NofileLimit::Raised { from, to } => {
                tracing::info!(from, to, "raised the open-file limit to the hard limit")
            }
            NofileLimit::Unchanged { limit } => tracing::info!(limit, "open-file limit"),
            NofileLimit::Failed { soft, errno } => {
                tracing::warn!(soft, errno, "could not raise the open-file limit")
            }
        }
        let limit = self.current();
        if limit < MIN_HARD_NOFILE {
            tracing::warn!(
                limit,
                "the open-file limit is below {MIN_HARD_NOFILE}: each session is a file, so this node holds fewer sessions (raise the hard limit, e.g. LimitNOFILE in systemd)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let got = raise_to_hard_limit();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(got.current(), lim.rlim_cur as u64);
    }
}
