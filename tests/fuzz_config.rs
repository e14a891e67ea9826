//! Fuzz target `config`: any configuration file is loaded, validated and turned into the
//! node's routes without a panic; a bad one is an error that names what is wrong.
//! Corpus: `fuzz/corpus/config/`; longer runs: `FUZZ_CASES=100000`.

use ai_gateway::{
    config::{Config, Overrides},
    routing::build_router,
};
use ai_gateway_actors::MockProvider;

#[test]
fn fuzz_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    ai_gateway_fuzz::fuzz("config", |input| {
        std::fs::write(&path, input).unwrap();
        match Config::load(Some(&path), &Overrides::default()) {
            Ok(config) => {
                let _ = config.check_secrets().map_err(|e| e.to_string());
                let _ = config.trusted_proxy_nets();
                drop(config.session_config("fuzz"));
                let _ = config.resume.to_actors();
                let mock = MockProvider::new(config.mock.clone());
                let _ = build_router(&config, mock).map_err(|e| e.to_string());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    });
}
