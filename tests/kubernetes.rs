//! `deploy/kubernetes/` checked without a cluster: the kustomization lists every manifest, each
//! rendered manifest passes `kubernetes-validate --strict` (offline: the package ships the
//! schemas; `scripts/test` installs it), the objects fit one another and the gateway, and the
//! environment a pod gets (ConfigMap, Secret files, the variables Kubernetes adds for every
//! Service) loads, with the Secret's placeholders refused.
#![allow(clippy::result_large_err)] // figment's Jail fixes the closures' error type

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use ai_gateway::{config::Overrides, Config};
use serde::Deserialize;
use serde_norway::Value;

/// Held by tests that change the process's environment (figment's Jail clears it) or start a
/// process that needs it (PATH), so they do not run at the same time.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kustomization() -> Value {
    serde_norway::from_str(&read(&dir().join("kustomization.yaml"))).unwrap()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// Every object of the kustomization, in order, with its `images` applied: what
/// `kubectl apply -k` would send. The kustomization may use only what this renders.
fn rendered() -> Vec<(String, Value)> {
    let k = kustomization();
    let keys: BTreeSet<String> = k.as_mapping().unwrap().keys().map(text).collect();
    let known: BTreeSet<String> = ["apiVersion", "kind", "resources", "images"]
        .map(String::from)
        .into();
    assert!(
        keys.is_subset(&known),
        "kustomization.yaml uses {keys:?}; this test renders only {known:?}"
    );
    assert_eq!(text(&k["kind"]), "Kustomization");
    let images: Vec<&Value> = k["images"]
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for file in k["resources"].as_sequence().expect("resources") {
        let file = text(file);
        for doc in serde_norway::Deserializer::from_str(&read(&dir().join(&file))) {
            let mut doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if doc.is_null() {
                continue;
            }
            let mut pod = doc
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"));
            for list in ["containers", "initContainers"] {
                let Some(pod) = pod.as_deref_mut() else { break };
                if let Some(containers) = pod.get_mut(list).and_then(Value::as_sequence_mut) {
                    for c in containers {
                        let image = text(&c["image"]);
                        let (name, tag) = image.split_once(':').unwrap_or((&image, ""));
                        if let Some(rule) = images.iter().find(|i| text(&i["name"]) == name) {
                            let name = rule.get("newName").map(text).unwrap_or(name.to_owned());
                            let tag = rule.get("newTag").map(text).unwrap_or(tag.to_owned());
                            let image = if tag.is_empty() {
                                name
                            } else {
                                format!("{name}:{tag}")
                            };
                            c["image"] = Value::String(image);
                        }
                    }
                }
            }
            out.push((file.clone(), doc));
        }
    }
    out
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| text(&o["kind"]) == kind && text(&o["metadata"]["name"]) == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

/// Whether `selector` (matchLabels or a plain map) picks pods labelled `pod`.
fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

#[test]
fn every_manifest_is_listed_and_passes_kubernetes_validate_strict() {
    let _env = env_lock();
    // Nothing in the folder is left out of the kustomization, and nothing listed is missing.
    let listed: BTreeSet<String> = kustomization()["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs the folder"
    );

    // Each rendered object in a file of its own, so each must be reported as passed.
    let objects = rendered();
    let out_dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (file, object)) in objects.iter().enumerate() {
        let path = out_dir.path().join(format!(
            "{i:02}-{}-{}.yaml",
            text(&object["kind"]).to_lowercase(),
            text(&object["metadata"]["name"])
        ));
        std::fs::write(&path, serde_norway::to_string(object).unwrap()).unwrap();
        files.push((file, path));
    }
    assert!(files.len() >= 8, "{files:?}");
    // Not the inherited directory: a figment Jail in a parallel test may have removed it.
    let out = Command::new("python3")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files.iter().map(|(_, p)| p))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: run scripts/test (or pip install -r \
         tests/python/requirements.txt)"
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for (file, path) in &files {
        let passed = format!("INFO {} passed for resource", path.display());
        assert!(
            stdout.lines().any(|l| l.starts_with(&passed)),
            "{file}: {} was not validated (no schema?):\n{stdout}\n{stderr}",
            path.display()
        );
    }
}

#[test]
fn the_objects_fit_each_other_and_the_gateway() {
    let objects = rendered();
    let kinds: BTreeSet<String> = objects.iter().map(|(_, o)| text(&o["kind"])).collect();
    for kind in [
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "no {kind}: {kinds:?}");
    }
    let config = find(&objects, "ConfigMap", "gateway-config");
    let data = labels(&config["data"]);
    let defaults = Config::default();

    let deployment = find(&objects, "Deployment", "gateway");
    let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
    assert!(selects(
        &labels(&deployment["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], Value::from("serve"));
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"],
        Value::Bool(true),
        "non-root"
    );
    assert_eq!(
        pod["securityContext"]["runAsUser"],
        Value::from(10001),
        "the image's user"
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"],
        Value::Bool(false)
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true)
    );
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["ports"][0]["containerPort"], Value::from(8080));
    let probe = |name: &str| {
        let p = &c[name]["httpGet"];
        assert_eq!(p["port"], Value::from("http"), "{name}");
        text(&p["path"])
    };
    assert_eq!(probe("livenessProbe"), "/healthz");
    assert_eq!(probe("startupProbe"), "/healthz");
    assert_eq!(probe("readinessProbe"), "/readyz");
    // The startup probe outlasts the wait for PostgreSQL and Redis.
    let startup = &c["startupProbe"];
    let startup_secs =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    let wait_secs: u64 = data
        .get("GATEWAY_DB_CONNECT_TIMEOUT_SECS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(defaults.db_connect_timeout_secs);
    assert!(
        startup_secs > wait_secs,
        "{startup_secs} s vs {wait_secs} s"
    );
    // preStop pause, then the drain, then the close grace, all before SIGKILL.
    let pre_stop = &c["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], Value::from("sleep"));
    let pause_ms = text(&pre_stop[1]).parse::<u64>().unwrap() * 1000;
    let drain_ms: u64 = data
        .get("GATEWAY_SHUTDOWN__DRAIN_TIMEOUT_MS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(defaults.shutdown.drain_timeout_ms);
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
    assert!(
        grace_ms > pause_ms + drain_ms + defaults.session.close_grace_ms,
        "terminationGracePeriodSeconds {grace_ms} ms must exceed preStop {pause_ms} + drain \
         {drain_ms} + close grace"
    );

    let service = find(&objects, "Service", "gateway");
    assert!(selects(&labels(&service["spec"]["selector"]), &pod_labels));
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        c["ports"][0]["name"]
    );

    let pdb = find(&objects, "PodDisruptionBudget", "gateway");
    assert!(selects(
        &labels(&pdb["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    let hpa = find(&objects, "HorizontalPodAutoscaler", "gateway");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"],
        Value::from("Deployment")
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        Value::from("gateway")
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);

    let job = find(&objects, "Job", "gateway-migrate");
    let job_pod = &job["spec"]["template"];
    assert_eq!(
        job_pod["spec"]["containers"][0]["args"][0],
        Value::from("migrate")
    );
    assert_eq!(
        job_pod["spec"]["securityContext"]["runAsNonRoot"],
        Value::Bool(true)
    );

    let policy = find(&objects, "NetworkPolicy", "gateway");
    let selector = labels(&policy["spec"]["podSelector"]["matchLabels"]);
    assert!(
        selects(&selector, &pod_labels),
        "the policy covers the pods"
    );
    assert!(selects(&selector, &labels(&job_pod["metadata"]["labels"])));
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"],
        Value::from(8080)
    );
}

/// What Kubernetes sets in every pod for each Service of the namespace (service links).
fn service_links(objects: &[(String, Value)]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (_, svc) in objects
        .iter()
        .filter(|(_, o)| text(&o["kind"]) == "Service")
    {
        let name = text(&svc["metadata"]["name"])
            .to_uppercase()
            .replace('-', "_");
        let ip = "10.96.0.10";
        for (i, port) in svc["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .enumerate()
        {
            let number = text(&port["port"]);
            let proto = port.get("protocol").map(text).unwrap_or("TCP".into());
            let lower = proto.to_lowercase();
            if i == 0 {
                env.insert(format!("{name}_SERVICE_HOST"), ip.to_owned());
                env.insert(format!("{name}_SERVICE_PORT"), number.clone());
                env.insert(format!("{name}_PORT"), format!("{lower}://{ip}:{number}"));
            }
            if let Some(port_name) = port.get("name").map(text) {
                let port_name = port_name.to_uppercase().replace('-', "_");
                env.insert(format!("{name}_SERVICE_PORT_{port_name}"), number.clone());
            }
            let base = format!("{name}_PORT_{number}_{proto}");
            env.insert(base.clone(), format!("{lower}://{ip}:{number}"));
            env.insert(format!("{base}_PROTO"), lower.clone());
            env.insert(format!("{base}_PORT"), number.clone());
            env.insert(format!("{base}_ADDR"), ip.to_owned());
        }
    }
    env
}

/// The image's `ENV` lines.
fn image_env() -> BTreeMap<String, String> {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/Dockerfile"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|rest| rest.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The environment of a pod of `workload` (`Deployment` or `Job`), with the Secret's files
/// written under `secret_dir` and `secrets` replacing its values where given.
fn pod_env(
    objects: &[(String, Value)],
    kind: &str,
    name: &str,
    secret_dir: &Path,
    secrets: &BTreeMap<&str, &str>,
) -> BTreeMap<String, String> {
    let workload = find(objects, kind, name);
    let pod = &workload["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut env = image_env();
    env.extend(service_links(objects));
    for source in c["envFrom"].as_sequence().into_iter().flatten() {
        let config = find(objects, "ConfigMap", &text(&source["configMapRef"]["name"]));
        env.extend(labels(&config["data"]));
    }
    for var in c["env"].as_sequence().into_iter().flatten() {
        let value = match var.get("value") {
            Some(v) => text(v),
            None => {
                assert_eq!(
                    var["valueFrom"]["fieldRef"]["fieldPath"],
                    Value::from("metadata.name")
                );
                "gateway-7d9f8b6c5-x2x9z".to_owned()
            }
        };
        env.insert(text(&var["name"]), value);
    }
    // The Secret volume: each key a file under the mount path, here under `secret_dir`.
    for mount in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let secret = find(objects, "Secret", &text(&volume["secret"]["secretName"]));
        let mount_path = text(&mount["mountPath"]);
        for (key, value) in labels(&secret["stringData"]) {
            let value = secrets.get(key.as_str()).map_or(value, |v| v.to_string());
            std::fs::write(secret_dir.join(&key), format!("{value}\n")).unwrap();
        }
        for value in env.values_mut() {
            if let Some(file) = value.strip_prefix(&format!("{mount_path}/")) {
                assert!(
                    secret["stringData"].get(file).is_some(),
                    "{value}: no such key in the Secret"
                );
                *value = secret_dir.join(file).display().to_string();
            }
        }
    }
    env
}

#[test]
fn a_pod_environment_loads_and_the_placeholders_are_refused() {
    let _env = env_lock();
    let objects = rendered();
    figment::Jail::expect_with(|jail| {
        let secret_dir = jail.directory().to_owned();
        let load = |jail: &mut figment::Jail, env: &BTreeMap<String, String>| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            Config::load(None, &Overrides::default())
        };

        let env = pod_env(
            &objects,
            "Deployment",
            "gateway",
            &secret_dir,
            &BTreeMap::new(),
        );
        assert!(env.contains_key("GATEWAY_SERVICE_HOST"), "{env:?}");
        assert!(env.contains_key("GATEWAY_PORT_8080_TCP_ADDR"), "{env:?}");
        let config = load(jail, &env).unwrap_or_else(|e| panic!("the pod refuses its env: {e}"));
        assert_eq!(config.node_id, "gateway-7d9f8b6c5-x2x9z");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert!(config.database_url.starts_with("postgres://"));
        assert!(config.redis_url.starts_with("redis://"));
        let err = config.check_secrets().unwrap_err().to_string();
        assert!(err.contains("published placeholder"), "{err}");

        let real = BTreeMap::from([
            ("jwt_secret", "4f0e9d8c7b6a59483726150f4e3d2c1b"),
            (
                "database_url",
                "postgres://gateway:Zk3v9q@postgres:5432/gateway",
            ),
            ("redis_url", "redis://:Pq7w2e@redis:6379/"),
        ]);
        let env = pod_env(&objects, "Deployment", "gateway", &secret_dir, &real);
        let config = load(jail, &env).unwrap();
        assert_eq!(config.jwt_secret, real["jwt_secret"]);
        assert_eq!(config.admin_token, "");
        config.check_secrets().expect("real secrets start");

        let env = pod_env(&objects, "Job", "gateway-migrate", &secret_dir, &real);
        let config = load(jail, &env).unwrap();
        assert_eq!(config.database_url, real["database_url"]);
        Ok(())
    });
}
