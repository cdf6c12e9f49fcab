//! Validation of the deployment files in `deploy/` and of the top-level
//! `Dockerfile` (no Docker, Kubernetes or Prometheus runs here, so the files
//! are checked by reading them):
//!
//! - every YAML document in the Kubernetes variants (`deploy/kubernetes/`,
//!   one replica on SQLite; `deploy/kubernetes-replicas/`, several on
//!   PostgreSQL) and `deploy/prometheus/` parses (multi-document aware), and
//!   the Kubernetes objects of each variant have their required fields and
//!   agree with each other: the Deployment's probes hit `/healthz`
//!   (liveness, startup) and `/readyz` (readiness) on the admin port 9090,
//!   it runs as non-root with resources set, the Service's ports reach the
//!   container's, the PDB and the ServiceMonitor select what they should,
//!   the kustomization lists every file, and the ConfigMap's config parses
//!   with [`portcullis::config::Config::parse`] using the environment the
//!   Deployment gives the container from its Secrets;
//! - the single replica is one pod, Recreate, its store on the claimed
//!   volume; the replicas are at least two, RollingUpdate without losing
//!   capacity, no volume claim, spread over nodes, an HPA on the Deployment
//!   from at least its replicas, a budget that keeps two and still lets a
//!   drain through, and a `postgres://` URL without a password, whose
//!   `password_env` a Secret provides;
//! - `compose.yaml`: replicas built from the Dockerfile share one config that
//!   parses with their environment, on the PostgreSQL service (same user,
//!   database and password) whose healthcheck they wait for, and an nginx
//!   load balancer round-robins over all of them at the issuer's address;
//! - every PromQL expression in the alerting rules and the Grafana dashboard
//!   names only metrics that `src/telemetry/metrics/mod.rs` exports (histograms through
//!   `_bucket`/`_sum`/`_count`), but for two alerts on metrics still to come;
//! - the systemd unit carries its hardening, and the Dockerfile builds in one
//!   stage and runs the binary unprivileged in another.
//!
//! Each check reports a problem instead of panicking, so `mutations_are_caught`
//! can break the real files one way at a time and see each break reported.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

/// Metrics the alerting rules may name before `src/telemetry/metrics/mod.rs` exports them:
/// they come with issue 4's TLS and live-reload work.
const FUTURE_METRICS: [&str; 2] =
    ["portcullis_tls_certificate_expiry_timestamp_seconds", "portcullis_config_reload_total"];

/// The comment that marks an alert on a [`FUTURE_METRICS`] metric.
const FUTURE_MARKER: &str = "# needs the metric from issue 4's TLS/reload work";

/// The drain timeout the examples use (`server.drain_timeout`, 30 s by default).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const ADMIN_PORT: i64 = 9090;
const HTTP_PORT: i64 = 8080;

// ---------------------------------------------------------------------------
// The files under test.

/// The files the checks read, by path relative to the repository root.
#[derive(Clone)]
struct Files {
    root: PathBuf,
    text: BTreeMap<String, String>,
}

impl Files {
    fn load() -> Files {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut text = BTreeMap::new();
        let mut dirs = vec![root.join("deploy")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&root).expect("below the root").to_string_lossy().replace('\\', "/");
                    let content = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
                    text.insert(rel, content);
                }
            }
        }
        for rel in ["Dockerfile", ".dockerignore", "compose.yaml", "src/telemetry/metrics/mod.rs"] {
            let content = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            text.insert(rel.to_string(), content);
        }
        Files { root, text }
    }

    fn get(&self, rel: &str) -> Option<&str> {
        self.text.get(rel).map(String::as_str)
    }

    /// The files directly in `dir` whose names end with `suffix`, sorted.
    fn in_dir(&self, dir: &str, suffix: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.text
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|name| !name.contains('/') && name.ends_with(suffix))
            .map(str::to_string)
            .collect()
    }

    /// A copy with every `from` in `rel` replaced by `to`.
    fn mutated(&self, rel: &str, from: &str, to: &str) -> Files {
        let mut copy = self.clone();
        let text = copy.text.get_mut(rel).unwrap_or_else(|| panic!("no file {rel}"));
        assert!(text.contains(from), "{rel} does not contain {from:?}: the mutation would test nothing");
        *text = text.replace(from, to);
        copy
    }
}

/// Problems found, each naming its file.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn add(&mut self, what: String) {
        self.0.push(what);
    }
}

/// Every check, over all the files.
fn problems(files: &Files) -> Vec<String> {
    let mut p = Problems::default();
    let known = exported_series(files.get("src/telemetry/metrics/mod.rs").unwrap_or_default(), &mut p);
    check_kubernetes(files, &mut p);
    check_prometheus(files, &known, &mut p);
    check_dashboard(files, &known, &mut p);
    check_container_config(files, &mut p);
    check_compose(files, &mut p);
    check_systemd(files, &mut p);
    check_dockerfile(files, &mut p);
    // Replicas sharing a file report its problems once.
    let mut seen = BTreeSet::new();
    p.0.retain(|problem| seen.insert(problem.clone()));
    p.0
}

#[test]
fn deploy_files_are_valid() {
    let problems = problems(&Files::load());
    assert!(problems.is_empty(), "problems in deploy/:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------
// YAML helpers.

/// The documents of a YAML file (empty documents, such as one holding only
/// comments, are left out).
fn yaml_docs(files: &Files, rel: &str, p: &mut Problems) -> Vec<Yaml> {
    let Some(text) = files.get(rel) else {
        p.add(format!("{rel}: missing"));
        return Vec::new();
    };
    match YamlLoader::load_from_str(text) {
        Ok(docs) => docs.into_iter().filter(|d| !d.is_null()).collect(),
        Err(e) => {
            p.add(format!("{rel}: not valid YAML: {e}"));
            Vec::new()
        }
    }
}

/// The node at `path` (mapping keys), `BadValue` when absent.
fn at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |node, key| &node[*key])
}

fn text_at<'a>(y: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    at(y, path).as_str()
}

fn list_at<'a>(y: &'a Yaml, path: &[&str]) -> &'a [Yaml] {
    at(y, path).as_vec().map(Vec::as_slice).unwrap_or_default()
}

/// A mapping of strings to strings (labels, annotations, selectors); `None`
/// when absent or when any key or value is not a string.
fn string_map(y: &Yaml) -> Option<BTreeMap<String, String>> {
    y.as_hash()?.iter().map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

// ---------------------------------------------------------------------------
// Kubernetes.

/// Where a variant's pods keep their state, which decides how they may scale.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// Embedded SQLite on a volume: one writer, one replica.
    Sqlite,
    /// Shared PostgreSQL: stateless pods, several replicas.
    Postgres,
}

/// A folder of complete manifests, and the store its config must use.
#[derive(Clone, Copy)]
struct Variant {
    dir: &'static str,
    store: Store,
}

const K8S_VARIANTS: [Variant; 2] = [
    Variant { dir: "deploy/kubernetes", store: Store::Sqlite },
    Variant { dir: "deploy/kubernetes-replicas", store: Store::Postgres },
];

/// An object of the manifests, with the file it came from.
struct Object {
    file: String,
    doc: Yaml,
}

impl Object {
    fn kind(&self) -> &str {
        text_at(&self.doc, &["kind"]).unwrap_or_default()
    }

    fn name(&self) -> &str {
        text_at(&self.doc, &["metadata", "name"]).unwrap_or_default()
    }

    fn at(&self) -> String {
        format!("{}: {} {:?}", self.file, self.kind(), self.name())
    }
}

/// The object of `kind` named `name`.
fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> Option<&'a Object> {
    objects.iter().find(|o| o.kind() == kind && o.name() == name)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_kubernetes(files: &Files, p: &mut Problems) {
    for v in K8S_VARIANTS {
        check_variant(files, v, p);
    }
}

fn check_variant(files: &Files, v: Variant, p: &mut Problems) {
    let dir = v.dir;
    for stray in files.in_dir(dir, ".yml") {
        p.add(format!("{dir}/{stray}: name it .yaml, so kustomize and this test see it"));
    }
    let mut objects = Vec::new();
    for name in files.in_dir(dir, ".yaml") {
        let rel = format!("{dir}/{name}");
        for doc in yaml_docs(files, &rel, p) {
            objects.push(Object { file: rel.clone(), doc });
        }
    }
    p.check(!objects.is_empty(), || format!("{dir}: no manifests"));
    let mut seen = BTreeSet::new();
    for o in &objects {
        p.check(text_at(&o.doc, &["apiVersion"]).is_some_and(|v| !v.is_empty()), || {
            format!("{}: a document has no apiVersion", o.file)
        });
        p.check(!o.kind().is_empty(), || format!("{}: a document has no kind", o.file));
        if o.kind() == "Kustomization" {
            continue;
        }
        p.check(is_dns_label(o.name()), || format!("{}: metadata.name must be a DNS label", o.at()));
        p.check(seen.insert((o.kind().to_string(), o.name().to_string())), || format!("{}: defined twice", o.at()));
        p.check(string_map(at(&o.doc, &["metadata", "labels"])).is_some_and(|l| !l.is_empty()), || {
            format!("{}: metadata.labels must be a non-empty map of strings", o.at())
        });
    }
    check_kustomization(files, dir, &objects, p);

    let of_kind = |kind: &str| objects.iter().filter(|o| o.kind() == kind).collect::<Vec<_>>();
    let deployments = of_kind("Deployment");
    let [deployment] = deployments.as_slice() else {
        p.add(format!("{dir}: expected exactly one Deployment, found {}", deployments.len()));
        return;
    };
    check_secrets(dir, &of_kind("Secret"), p);
    let container = list_at(&deployment.doc, &["spec", "template", "spec", "containers"]).first();
    let env = container.map(|c| container_env(&deployment.at(), c, &objects, p)).unwrap_or_default();
    let config = check_configmap(dir, &of_kind("ConfigMap"), &env, p);
    let pod_labels = check_deployment(deployment, &objects, config.as_ref(), p);
    check_services(dir, &of_kind("Service"), deployment, &pod_labels, p);
    let pdbs = of_kind("PodDisruptionBudget");
    let [pdb] = pdbs.as_slice() else {
        p.add(format!("{dir}: expected one PodDisruptionBudget, found {}", pdbs.len()));
        return;
    };
    check_pdb(pdb, &pod_labels, p);
    check_service_monitor(dir, &of_kind("ServiceMonitor"), &of_kind("Service"), p);
    match v.store {
        Store::Sqlite => check_single_replica(deployment, &objects, pdb, config.as_ref(), p),
        Store::Postgres => {
            check_replicas(deployment, &objects, pdb, &pod_labels, p);
            check_hpa(dir, &of_kind("HorizontalPodAutoscaler"), deployment, p);
            if let Some(c) = &config {
                let from_secret = |var: &str| env.get(var).is_some_and(|e| e.from_secret);
                check_postgres_store(&c.at, &c.text, &from_secret, "a Secret the container loads", p);
            }
        }
    }
}

fn check_kustomization(files: &Files, dir: &str, objects: &[Object], p: &mut Problems) {
    let Some(k) = objects.iter().find(|o| o.kind() == "Kustomization") else {
        p.add(format!("{dir}/kustomization.yaml: no Kustomization"));
        return;
    };
    p.check(k.file == format!("{dir}/kustomization.yaml"), || {
        format!("{}: the Kustomization belongs in kustomization.yaml", k.file)
    });
    p.check(text_at(&k.doc, &["apiVersion"]) == Some("kustomize.config.k8s.io/v1beta1"), || {
        format!("{}: apiVersion must be kustomize.config.k8s.io/v1beta1", k.file)
    });
    let listed: BTreeSet<&str> = list_at(&k.doc, &["resources"]).iter().filter_map(Yaml::as_str).collect();
    let present: BTreeSet<String> =
        files.in_dir(dir, ".yaml").into_iter().filter(|f| f != "kustomization.yaml").collect();
    for f in &present {
        p.check(listed.contains(f.as_str()), || format!("{dir}/kustomization.yaml: resources does not list {f}"));
    }
    for f in &listed {
        p.check(present.contains(*f), || format!("{dir}/kustomization.yaml: lists {f}, which is not in the folder"));
    }
}

/// Committed Secrets hold visibly fake values only, and there is a TLS one
/// (placeholder) for the gateway's certificate.
fn check_secrets(dir: &str, secrets: &[&Object], p: &mut Problems) {
    for s in secrets {
        if text_at(&s.doc, &["type"]) == Some("kubernetes.io/tls") {
            for key in ["tls.crt", "tls.key"] {
                p.check(
                    at(&s.doc, &["stringData", key]).as_str().is_some() || !at(&s.doc, &["data", key]).is_badvalue(),
                    || format!("{}: a TLS Secret needs {key}", s.at()),
                );
            }
        }
        let Some(data) = string_map(at(&s.doc, &["stringData"])) else {
            p.add(format!("{}: stringData must be a map of strings (placeholders to replace)", s.at()));
            continue;
        };
        for (k, v) in data {
            p.check(v.contains("REPLACE"), || format!("{}: {k} does not look like a placeholder (REPLACE...)", s.at()));
        }
    }
    p.check(secrets.iter().any(|s| text_at(&s.doc, &["type"]) == Some("kubernetes.io/tls")), || {
        format!("{dir}: no kubernetes.io/tls Secret (placeholder) for the gateway's certificate")
    });
}

/// A variable of a container's environment.
struct EnvValue {
    value: String,
    /// Whether a Secret provides it (rather than a literal in the manifest).
    from_secret: bool,
}

/// The environment a container gets from its `env` and `envFrom`, with the
/// Secrets they name resolved from the manifests.
fn container_env(w: &str, c: &Yaml, objects: &[Object], p: &mut Problems) -> BTreeMap<String, EnvValue> {
    let mut env = BTreeMap::new();
    let secret_data = |name: &str| find(objects, "Secret", name).and_then(|s| string_map(at(&s.doc, &["stringData"])));
    let loaded: Vec<&str> =
        list_at(c, &["envFrom"]).iter().filter_map(|e| text_at(e, &["secretRef", "name"])).collect();
    p.check(!loaded.is_empty(), || format!("{w}: envFrom must load the client secrets from a Secret"));
    for name in loaded {
        match secret_data(name) {
            Some(data) => {
                env.extend(data.into_iter().map(|(k, value)| (k, EnvValue { value, from_secret: true })));
            }
            None => p.add(format!("{w}: envFrom names Secret {name:?}, which the manifests do not define")),
        }
    }
    // `env` entries come after `envFrom` and win over it.
    for e in list_at(c, &["env"]) {
        let var = text_at(e, &["name"]).unwrap_or_default().to_string();
        let key_ref = at(e, &["valueFrom", "secretKeyRef"]);
        if let Some(value) = text_at(e, &["value"]) {
            env.insert(var, EnvValue { value: value.to_string(), from_secret: false });
        } else if let (Some(name), Some(key)) = (text_at(key_ref, &["name"]), text_at(key_ref, &["key"])) {
            match secret_data(name).and_then(|d| d.get(key).cloned()) {
                Some(value) => _ = env.insert(var, EnvValue { value, from_secret: true }),
                None => p.add(format!(
                    "{w}: env {var} names Secret {name:?} key {key:?}, which the manifests do not define"
                )),
            }
        }
    }
    env
}

/// The config file of a ConfigMap, parsed.
struct ConfigFile {
    /// Where it is, for problems.
    at: String,
    /// Its key in the ConfigMap: the file name it is mounted as.
    key: String,
    text: String,
    config: Config,
}

/// The ConfigMap's config, parsed with the environment the container gets.
fn check_configmap(
    dir: &str,
    configmaps: &[&Object],
    env: &BTreeMap<String, EnvValue>,
    p: &mut Problems,
) -> Option<ConfigFile> {
    let [cm] = configmaps else {
        p.add(format!("{dir}: expected one ConfigMap, found {}", configmaps.len()));
        return None;
    };
    let data = string_map(at(&cm.doc, &["data"])).unwrap_or_default();
    let [(key, toml)] = data.iter().collect::<Vec<_>>()[..] else {
        p.add(format!("{}: data must hold exactly one file, the config", cm.at()));
        return None;
    };
    let asked = RefCell::new(Vec::new());
    let lookup = |var: &str| {
        asked.borrow_mut().push(var.to_string());
        env.get(var).map(|e| e.value.clone())
    };
    match Config::parse(toml, &format!("{} {key}", cm.at()), &lookup) {
        Ok(config) => {
            p.check(!asked.borrow().is_empty(), || {
                format!("{}: no client takes its secret from the environment (client_secret_env)", cm.at())
            });
            check_listeners(&cm.at(), &config, p);
            Some(ConfigFile { at: cm.at(), key: key.clone(), text: toml.clone(), config })
        }
        Err(e) => {
            p.add(format!("{}: the config does not parse with the Deployment's environment: {e}", cm.at()));
            None
        }
    }
}

/// A container config must listen on every interface, on the ports the
/// manifests and the image expose, and drain within the stop timeouts.
fn check_listeners(at: &str, config: &Config, p: &mut Problems) {
    let want = |addr: SocketAddr, port: i64| addr.ip().is_unspecified() && i64::from(addr.port()) == port;
    p.check(want(config.server.listen, HTTP_PORT), || {
        format!("{at}: server.listen is {}, want 0.0.0.0:{HTTP_PORT}", config.server.listen)
    });
    p.check(want(config.admin.listen, ADMIN_PORT), || {
        format!("{at}: admin.listen is {}, want 0.0.0.0:{ADMIN_PORT}", config.admin.listen)
    });
    p.check(config.server.drain_timeout <= DRAIN_TIMEOUT, || {
        format!("{at}: server.drain_timeout is longer than the {DRAIN_TIMEOUT:?} the stop timeouts allow for")
    });
}

/// An SQLite store in a container lives in the volume /var/lib/portcullis.
fn check_sqlite_store(at: &str, config: &Config, p: &mut Problems) {
    p.check(config.storage.url.starts_with("sqlite:///var/lib/portcullis/"), || {
        format!("{at}: storage.url {:?} is not in the volume /var/lib/portcullis", config.storage.url)
    });
}

/// The parts of a `postgres://user[:password]@host[:port]/db[?...]` URL:
/// user information, host, database.
fn postgres_url(url: &str) -> Option<(&str, &str, &str)> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let (userinfo, rest) = rest.split_once('@')?;
    let (authority, path) = rest.split_once('/')?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Some((userinfo, host, path.split('?').next().unwrap_or_default()))
}

/// What a config on PostgreSQL names: the user, host and database of its
/// URL, and the variable that holds the password.
struct PostgresStore {
    user: String,
    host: String,
    db: String,
    password_env: String,
}

/// A config on PostgreSQL names the user in the URL and takes the password
/// from a variable that `provided` (described by `source`) says is set.
fn check_postgres_store(
    at: &str,
    text: &str,
    provided: &dyn Fn(&str) -> bool,
    source: &str,
    p: &mut Problems,
) -> Option<PostgresStore> {
    let raw: toml::Table = toml::from_str(text).ok()?;
    let storage = raw.get("storage").and_then(toml::Value::as_table);
    let field = |key: &str| storage.and_then(|s| s.get(key)).and_then(toml::Value::as_str).unwrap_or_default();
    let Some((userinfo, host, db)) = postgres_url(field("url")) else {
        p.add(format!("{at}: storage.url must be postgres://USER@HOST[:PORT]/DATABASE, shared by the replicas"));
        return None;
    };
    p.check(!userinfo.contains(':'), || {
        format!("{at}: storage.url carries a password: name the user only and take the password from password_env")
    });
    let var = field("password_env");
    p.check(!var.is_empty(), || format!("{at}: storage.password_env must name the variable with the password"));
    p.check(var.is_empty() || provided(var), || format!("{at}: storage.password_env {var} must come from {source}"));
    let user = userinfo.split(':').next().unwrap_or_default();
    Some(PostgresStore { user: user.into(), host: host.into(), db: db.into(), password_env: var.into() })
}

/// The number a probe or Service port names: a number, or a container port's name.
fn resolve_port(port: &Yaml, container: &Yaml) -> Option<i64> {
    match port {
        Yaml::Integer(n) => Some(*n),
        Yaml::String(name) => list_at(container, &["ports"])
            .iter()
            .find(|cp| text_at(cp, &["name"]) == Some(name))
            .and_then(|cp| at(cp, &["containerPort"]).as_i64()),
        _ => None,
    }
}

fn quantity(y: &Yaml) -> bool {
    y.as_str().is_some_and(|s| !s.is_empty()) || y.as_i64().is_some_and(|n| n > 0)
}

/// Checks the Deployment; returns its pod template's labels.
fn check_deployment(
    d: &Object,
    objects: &[Object],
    config: Option<&ConfigFile>,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    let w = d.at();
    let spec = at(&d.doc, &["spec"]);
    let pod = at(spec, &["template", "spec"]);
    p.check(text_at(&d.doc, &["apiVersion"]) == Some("apps/v1"), || format!("{w}: apiVersion must be apps/v1"));
    let pod_labels = string_map(at(spec, &["template", "metadata", "labels"])).unwrap_or_default();
    let selector = string_map(at(spec, &["selector", "matchLabels"])).unwrap_or_default();
    p.check(!selector.is_empty() && is_subset(&selector, &pod_labels), || {
        format!("{w}: spec.selector.matchLabels must be non-empty and match the pod template's labels")
    });
    let annotations = string_map(at(spec, &["template", "metadata", "annotations"]));
    p.check(annotations.is_some(), || format!("{w}: pod annotations must be a map of strings"));
    let annotations = annotations.unwrap_or_default();
    for (k, v) in [("prometheus.io/scrape", "true"), ("prometheus.io/port", "9090"), ("prometheus.io/path", "/metrics")]
    {
        p.check(annotations.get(k).map(String::as_str) == Some(v), || {
            format!("{w}: pod annotation {k} must be \"{v}\"")
        });
    }
    let grace = at(pod, &["terminationGracePeriodSeconds"]).as_i64().unwrap_or(0);
    // SIGTERM first keeps serving for the shutdown delay, then drains.
    let stop = config.map_or(DRAIN_TIMEOUT, |c| c.config.server.shutdown_delay + c.config.server.drain_timeout);
    p.check(u64::try_from(grace).is_ok_and(|g| g > stop.as_secs()), || {
        format!(
            "{w}: terminationGracePeriodSeconds {grace} must exceed the shutdown delay plus the drain timeout, {stop:?}"
        )
    });
    p.check(at(pod, &["securityContext", "runAsNonRoot"]).as_bool() == Some(true), || {
        format!("{w}: the pod's securityContext.runAsNonRoot must be true")
    });
    p.check(at(pod, &["securityContext", "runAsUser"]).as_i64().is_none_or(|u| u != 0), || {
        format!("{w}: runAsUser must not be 0")
    });

    let containers = list_at(pod, &["containers"]);
    p.check(containers.len() == 1, || format!("{w}: expected one container, found {}", containers.len()));
    let volumes = list_at(pod, &["volumes"]);
    for c in containers {
        let cw = format!("{w} container {:?}", text_at(c, &["name"]).unwrap_or_default());
        p.check(text_at(c, &["image"]).is_some_and(|i| !i.is_empty()), || format!("{cw}: no image"));
        let sc = at(c, &["securityContext"]);
        p.check(!matches!(sc["runAsNonRoot"], Yaml::Boolean(false)), || format!("{cw}: runAsNonRoot is false"));
        p.check(sc["readOnlyRootFilesystem"].as_bool() == Some(true), || {
            format!("{cw}: securityContext.readOnlyRootFilesystem must be true")
        });
        p.check(sc["allowPrivilegeEscalation"].as_bool() == Some(false), || {
            format!("{cw}: securityContext.allowPrivilegeEscalation must be false")
        });
        p.check(list_at(sc, &["capabilities", "drop"]).iter().any(|c| c.as_str() == Some("ALL")), || {
            format!("{cw}: securityContext.capabilities.drop must include ALL")
        });
        for (part, key) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
            p.check(quantity(at(c, &["resources", part, key])), || format!("{cw}: resources.{part}.{key} is not set"));
        }
        for (name, port) in [("http", HTTP_PORT), ("admin", ADMIN_PORT)] {
            p.check(resolve_port(&Yaml::String(name.into()), c) == Some(port), || {
                format!("{cw}: needs a container port named {name} = {port}")
            });
        }
        // Liveness must not ask the store (an outage would restart every
        // pod); readiness must (a replica cut off from it leaves the Service).
        for (probe, path, required) in [
            ("livenessProbe", "/healthz", true),
            ("readinessProbe", "/readyz", true),
            ("startupProbe", "/healthz", false),
        ] {
            let get = at(c, &[probe, "httpGet"]);
            if !required && at(c, &[probe]).is_badvalue() {
                continue;
            }
            p.check(text_at(get, &["path"]) == Some(path), || format!("{cw}: {probe} must GET {path}"));
            p.check(resolve_port(&get["port"], c) == Some(ADMIN_PORT), || {
                format!("{cw}: {probe} must use the admin port {ADMIN_PORT}")
            });
        }
        check_mounts(&cw, c, volumes, objects, config, p);
    }
    pod_labels
}

/// The directory where the pod mounts the volume whose `source` (such as
/// `configMap.name`) is `object`.
fn mount_of<'a>(c: &'a Yaml, volumes: &[Yaml], source: &[&str], object: &str) -> Option<&'a str> {
    list_at(c, &["volumeMounts"]).iter().find_map(|m| {
        let name = text_at(m, &["name"])?;
        let v = volumes.iter().find(|v| text_at(v, &["name"]) == Some(name))?;
        (text_at(v, source) == Some(object)).then_some(())?;
        text_at(m, &["mountPath"])
    })
}

/// The config and the Secrets are mounted where the config and the command
/// line expect them.
fn check_mounts(
    cw: &str,
    c: &Yaml,
    volumes: &[Yaml],
    objects: &[Object],
    config: Option<&ConfigFile>,
    p: &mut Problems,
) {
    for m in list_at(c, &["volumeMounts"]) {
        let name = text_at(m, &["name"]).unwrap_or_default();
        p.check(volumes.iter().any(|v| text_at(v, &["name"]) == Some(name)), || {
            format!("{cw}: mounts volume {name:?}, which the pod does not define")
        });
    }
    for v in volumes {
        for (source, kind) in [
            (["configMap", "name"], "ConfigMap"),
            (["secret", "secretName"], "Secret"),
            (["persistentVolumeClaim", "claimName"], "PersistentVolumeClaim"),
        ] {
            if let Some(name) = text_at(v, &source) {
                p.check(find(objects, kind, name).is_some(), || {
                    format!("{cw}: volume uses {kind} {name:?}, which the manifests do not define")
                });
            }
        }
    }
    let args: Vec<&str> = list_at(c, &["args"]).iter().filter_map(Yaml::as_str).collect();
    let config_path = args.windows(2).find(|w| w[0] == "--config").map(|w| w[1]);
    p.check(args.first() == Some(&"serve") && config_path.is_some(), || {
        format!("{cw}: args must be serve --config FILE")
    });
    let Some(config) = config else { return };
    let cm = objects.iter().find(|o| o.kind() == "ConfigMap").map(Object::name).unwrap_or_default();
    let config_dir = mount_of(c, volumes, &["configMap", "name"], cm);
    p.check(config_dir.zip(config_path).is_some_and(|(dir, file)| file == format!("{dir}/{}", config.key)), || {
        format!("{cw}: --config {config_path:?} is not the ConfigMap's {} as mounted ({config_dir:?})", config.key)
    });
}

fn check_services(
    dir: &str,
    services: &[&Object],
    d: &Object,
    pod_labels: &BTreeMap<String, String>,
    p: &mut Problems,
) {
    let [svc] = services else {
        p.add(format!("{dir}: expected one Service, found {}", services.len()));
        return;
    };
    let w = svc.at();
    let selector = string_map(at(&svc.doc, &["spec", "selector"])).unwrap_or_default();
    p.check(!selector.is_empty() && is_subset(&selector, pod_labels), || {
        format!("{w}: spec.selector must be non-empty and match the Deployment's pod labels")
    });
    let container =
        &list_at(&d.doc, &["spec", "template", "spec", "containers"]).first().cloned().unwrap_or(Yaml::Null);
    let ports = list_at(&svc.doc, &["spec", "ports"]);
    for (name, port, target) in [("http", 80, HTTP_PORT), ("admin", ADMIN_PORT, ADMIN_PORT)] {
        let found = ports.iter().find(|sp| text_at(sp, &["name"]) == Some(name));
        p.check(found.is_some_and(|sp| sp["port"].as_i64() == Some(port)), || {
            format!("{w}: needs a port named {name} = {port}")
        });
        p.check(found.is_some_and(|sp| resolve_port(&sp["targetPort"], container) == Some(target)), || {
            format!("{w}: port {name} must reach container port {target}")
        });
    }
}

fn check_pdb(pdb: &Object, pod_labels: &BTreeMap<String, String>, p: &mut Problems) {
    let w = pdb.at();
    p.check(text_at(&pdb.doc, &["apiVersion"]) == Some("policy/v1"), || format!("{w}: apiVersion must be policy/v1"));
    let selector = string_map(at(&pdb.doc, &["spec", "selector", "matchLabels"])).unwrap_or_default();
    p.check(!selector.is_empty() && is_subset(&selector, pod_labels), || {
        format!("{w}: the PodDisruptionBudget's selector must match the Deployment's pod labels")
    });
}

fn check_service_monitor(dir: &str, monitors: &[&Object], services: &[&Object], p: &mut Problems) {
    let [sm] = monitors else {
        p.add(format!("{dir}: expected one ServiceMonitor, found {}", monitors.len()));
        return;
    };
    let w = sm.at();
    p.check(text_at(&sm.doc, &["apiVersion"]) == Some("monitoring.coreos.com/v1"), || {
        format!("{w}: apiVersion must be monitoring.coreos.com/v1")
    });
    let selector = string_map(at(&sm.doc, &["spec", "selector", "matchLabels"])).unwrap_or_default();
    let selected: Vec<&&Object> = services
        .iter()
        .filter(|s| {
            let labels = string_map(at(&s.doc, &["metadata", "labels"])).unwrap_or_default();
            !selector.is_empty() && is_subset(&selector, &labels)
        })
        .collect();
    p.check(!selected.is_empty(), || format!("{w}: spec.selector.matchLabels selects no Service's labels"));
    let endpoints = list_at(&sm.doc, &["spec", "endpoints"]);
    let admin = endpoints.iter().find(|e| text_at(e, &["port"]) == Some("admin"));
    p.check(admin.is_some_and(|e| text_at(e, &["path"]) == Some("/metrics")), || {
        format!("{w}: needs an endpoint on port admin, path /metrics")
    });
    for s in selected {
        let names: Vec<&str> =
            list_at(&s.doc, &["spec", "ports"]).iter().filter_map(|sp| text_at(sp, &["name"])).collect();
        for e in endpoints {
            let port = text_at(e, &["port"]).unwrap_or_default();
            p.check(names.contains(&port), || format!("{w}: endpoint port {port:?} is not a port of {}", s.at()));
        }
    }
}

/// SQLite: one writer, so one replica, replaced by Recreate, with its store
/// on the claimed volume and a budget that lets the pod be evicted.
fn check_single_replica(d: &Object, objects: &[Object], pdb: &Object, config: Option<&ConfigFile>, p: &mut Problems) {
    let w = d.at();
    let spec = at(&d.doc, &["spec"]);
    p.check(at(spec, &["replicas"]).as_i64() == Some(1), || format!("{w}: replicas must be 1 on the SQLite store"));
    p.check(text_at(spec, &["strategy", "type"]) == Some("Recreate"), || {
        format!("{w}: strategy.type must be Recreate (SQLite has one writer)")
    });
    // A budget that keeps one available would block every drain.
    let pw = pdb.at();
    p.check(at(&pdb.doc, &["spec", "maxUnavailable"]).as_i64() == Some(1), || {
        format!("{pw}: with one replica use maxUnavailable: 1")
    });
    p.check(at(&pdb.doc, &["spec", "minAvailable"]).is_badvalue(), || {
        format!("{pw}: minAvailable with one replica blocks node drains")
    });
    let Some(config) = config else { return };
    check_sqlite_store(&config.at, &config.config, p);
    let pod = at(spec, &["template", "spec"]);
    let pvc = objects.iter().find(|o| o.kind() == "PersistentVolumeClaim").map(Object::name).unwrap_or_default();
    let db = config.config.storage.url.trim_start_matches("sqlite://");
    for c in list_at(pod, &["containers"]) {
        let data_dir = mount_of(c, list_at(pod, &["volumes"]), &["persistentVolumeClaim", "claimName"], pvc);
        p.check(data_dir.is_some_and(|dir| db.starts_with(&format!("{dir}/"))), || {
            format!("{w}: the store {db:?} is not on the PersistentVolumeClaim's mount ({data_dir:?})")
        });
    }
}

/// PostgreSQL: stateless replicas, rolled without losing capacity, spread
/// over nodes, with a budget that keeps two of them through drains.
fn check_replicas(
    d: &Object,
    objects: &[Object],
    pdb: &Object,
    pod_labels: &BTreeMap<String, String>,
    p: &mut Problems,
) {
    let w = d.at();
    let spec = at(&d.doc, &["spec"]);
    let pod = at(spec, &["template", "spec"]);
    let replicas = at(spec, &["replicas"]).as_i64().unwrap_or(1);
    p.check(replicas >= 2, || format!("{w}: replicas must be at least 2 on the PostgreSQL store"));
    p.check(
        text_at(spec, &["strategy", "type"]) == Some("RollingUpdate")
            && matches!(at(spec, &["strategy", "rollingUpdate", "maxUnavailable"]), Yaml::Integer(0)),
        || format!("{w}: strategy must be RollingUpdate with rollingUpdate.maxUnavailable: 0"),
    );
    let claims = list_at(pod, &["volumes"]).iter().any(|v| !at(v, &["persistentVolumeClaim"]).is_badvalue());
    p.check(!claims && !objects.iter().any(|o| o.kind() == "PersistentVolumeClaim"), || {
        format!("{w}: no PersistentVolumeClaim: the store is PostgreSQL and the pods keep no state")
    });
    // Spread over nodes, by topology spread or by anti-affinity.
    let selects_pods = |term: &Yaml| {
        let selector = string_map(at(term, &["labelSelector", "matchLabels"])).unwrap_or_default();
        text_at(term, &["topologyKey"]) == Some("kubernetes.io/hostname")
            && !selector.is_empty()
            && is_subset(&selector, pod_labels)
    };
    let anti = at(pod, &["affinity", "podAntiAffinity"]);
    let spread = list_at(pod, &["topologySpreadConstraints"]).iter().any(selects_pods)
        || list_at(anti, &["requiredDuringSchedulingIgnoredDuringExecution"]).iter().any(selects_pods)
        || list_at(anti, &["preferredDuringSchedulingIgnoredDuringExecution"])
            .iter()
            .any(|t| selects_pods(at(t, &["podAffinityTerm"])));
    p.check(spread, || {
        format!(
            "{w}: spread the pods across nodes (topologySpreadConstraints or podAntiAffinity on \
             kubernetes.io/hostname, selecting the pod labels)"
        )
    });
    // What a drain leaves running, counted at the starting replicas.
    let pw = pdb.at();
    let (min, max) = (at(&pdb.doc, &["spec", "minAvailable"]), at(&pdb.doc, &["spec", "maxUnavailable"]));
    let kept = match (min, max) {
        (Yaml::Integer(n), Yaml::BadValue) => Some(*n),
        (Yaml::BadValue, Yaml::Integer(n)) => Some(replicas - n),
        _ => None,
    };
    match kept {
        None => p.add(format!("{pw}: set one of minAvailable or maxUnavailable, as a number")),
        Some(kept) => {
            p.check(kept >= 2, || {
                format!("{pw}: keeps {kept} of {replicas} replicas through a drain; keep at least 2")
            });
            p.check(kept < replicas, || format!("{pw}: keeps all {replicas} replicas, so it blocks every node drain"));
        }
    }
}

/// The HPA scales the Deployment, from no fewer replicas than it starts with.
fn check_hpa(dir: &str, hpas: &[&Object], d: &Object, p: &mut Problems) {
    let [hpa] = hpas else {
        p.add(format!("{dir}: expected one HorizontalPodAutoscaler, found {}", hpas.len()));
        return;
    };
    let w = hpa.at();
    let spec = at(&hpa.doc, &["spec"]);
    p.check(text_at(&hpa.doc, &["apiVersion"]) == Some("autoscaling/v2"), || {
        format!("{w}: apiVersion must be autoscaling/v2")
    });
    let target = at(spec, &["scaleTargetRef"]);
    p.check(
        text_at(target, &["apiVersion"]) == Some("apps/v1")
            && text_at(target, &["kind"]) == Some("Deployment")
            && text_at(target, &["name"]) == Some(d.name()),
        || format!("{w}: scaleTargetRef must be the apps/v1 Deployment {:?}", d.name()),
    );
    let replicas = at(&d.doc, &["spec", "replicas"]).as_i64().unwrap_or(1);
    let min = at(spec, &["minReplicas"]).as_i64().unwrap_or(1);
    let max = at(spec, &["maxReplicas"]).as_i64().unwrap_or(0);
    p.check(min >= replicas, || {
        format!("{w}: minReplicas {min} must be at least the Deployment's replicas, {replicas}")
    });
    p.check(max > min, || format!("{w}: maxReplicas {max} must exceed minReplicas {min}"));
    let cpu = list_at(spec, &["metrics"]).iter().any(|m| {
        text_at(m, &["type"]) == Some("Resource")
            && text_at(m, &["resource", "name"]) == Some("cpu")
            && text_at(m, &["resource", "target", "type"]) == Some("Utilization")
            && at(m, &["resource", "target", "averageUtilization"]).as_i64().is_some_and(|u| (1..=100).contains(&u))
    });
    p.check(cpu, || format!("{w}: needs a CPU Utilization target (averageUtilization 1 to 100)"));
}

// ---------------------------------------------------------------------------
// The container config.

fn check_container_config(files: &Files, p: &mut Problems) {
    let rel = "deploy/portcullis.container.toml";
    let Some(text) = files.get(rel) else {
        p.add(format!("{rel}: missing"));
        return;
    };
    let asked = RefCell::new(Vec::new());
    let env = |var: &str| {
        asked.borrow_mut().push(var.to_string());
        Some("a-secret-from-the-environment".to_string())
    };
    match Config::parse(text, rel, &env) {
        Ok(config) => {
            check_listeners(rel, &config, p);
            check_sqlite_store(rel, &config, p);
            p.check(!asked.borrow().is_empty(), || format!("{rel}: client secrets must come from client_secret_env"));
        }
        Err(e) => p.add(format!("{rel}: does not parse: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Docker Compose.

const COMPOSE: &str = "compose.yaml";

/// The config the image runs when a service gives no command.
const IMAGE_CONFIG: &str = "/etc/portcullis/portcullis.toml";

/// A mapping with its merge keys (`<<: *anchor`) applied, as Compose reads
/// it: yaml-rust2 resolves the alias but keeps `<<` as a key.
fn merged(y: &Yaml) -> Yaml {
    let Some(h) = y.as_hash() else { return y.clone() };
    let merge_key = Yaml::String("<<".into());
    let mut out = yaml_rust2::yaml::Hash::new();
    let bases = match h.get(&merge_key) {
        Some(Yaml::Array(list)) => list.clone(),
        Some(base) => vec![base.clone()],
        None => Vec::new(),
    };
    for base in bases.iter().rev() {
        if let Yaml::Hash(b) = merged(base) {
            out.extend(b);
        }
    }
    out.extend(h.iter().filter(|(k, _)| **k != merge_key).map(|(k, v)| (k.clone(), v.clone())));
    Yaml::Hash(out)
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A service's `environment`, given as a map or as `NAME=value` lines.
fn compose_env(service: &Yaml) -> BTreeMap<String, String> {
    match at(service, &["environment"]) {
        Yaml::Hash(h) => h.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?))).collect(),
        Yaml::Array(lines) => lines
            .iter()
            .filter_map(|l| l.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A service's mounts as (source, target): a path relative to the compose
/// file (without `./`), or a named volume.
fn compose_mounts(service: &Yaml) -> Vec<(String, String)> {
    list_at(service, &["volumes"])
        .iter()
        .filter_map(|v| {
            let (source, target) = match v {
                Yaml::String(short) => {
                    let mut parts = short.split(':');
                    (parts.next()?, parts.next()?)
                }
                long => (text_at(long, &["source"])?, text_at(long, &["target"])?),
            };
            Some((source.trim_start_matches("./").to_string(), target.to_string()))
        })
        .collect()
}

/// A service's published ports as (host port, container port).
fn compose_ports(service: &Yaml) -> Vec<(String, String)> {
    list_at(service, &["ports"])
        .iter()
        .filter_map(|port| match port {
            Yaml::String(short) => {
                let mut parts = short.rsplit(':');
                let container = parts.next()?.split('/').next()?;
                Some((parts.next()?.to_string(), container.to_string()))
            }
            long => Some((scalar(at(long, &["published"]))?, scalar(at(long, &["target"]))?)),
        })
        .collect()
}

/// The directives of an nginx config, each with the blocks it is in:
/// `upstream u { server a:1; }` gives (["upstream u"], ["server", "a:1"]).
fn nginx_directives(text: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    for line in text.lines() {
        for c in line.chars().chain(['\n']) {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '#') => break,
                (None, '"' | '\'') => quote = Some(c),
                (None, c) if c.is_whitespace() || ";{}".contains(c) => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    match c {
                        ';' => out.push((blocks.clone(), std::mem::take(&mut words))),
                        '{' => blocks.push(std::mem::take(&mut words).join(" ")),
                        '}' => _ = blocks.pop(),
                        _ => {}
                    }
                }
                (None, c) => word.push(c),
            }
        }
        if quote.is_none() && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    out
}

/// `compose.yaml`: PostgreSQL, replicas built from the Dockerfile sharing
/// one config on it, and a load balancer in front at the issuer's address.
fn check_compose(files: &Files, p: &mut Problems) {
    let Some(doc) = yaml_docs(files, COMPOSE, p).into_iter().next() else { return };
    let services: BTreeMap<String, Yaml> = at(&doc, &["services"])
        .as_hash()
        .map(|h| h.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), merged(v)))).collect())
        .unwrap_or_default();
    // The replicas: the services built here.
    let replicas: Vec<&str> =
        services.iter().filter(|(_, s)| !at(s, &["build"]).is_badvalue()).map(|(n, _)| n.as_str()).collect();
    p.check(replicas.len() >= 2, || format!("{COMPOSE}: needs at least two Portcullis replicas, found {replicas:?}"));
    let mut config_files = BTreeSet::new();
    let mut listen_ports = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    let mut databases = BTreeSet::new();
    for &name in &replicas {
        let s = &services[name];
        let w = format!("{COMPOSE}: service {name}");
        let context = text_at(s, &["build"]).or_else(|| text_at(s, &["build", "context"]));
        p.check(context == Some(".") && text_at(s, &["build", "dockerfile"]).is_none_or(|f| f == "Dockerfile"), || {
            format!("{w}: must build the top-level Dockerfile (build: .)")
        });
        let command: Vec<String> = match at(s, &["command"]) {
            Yaml::Array(words) => words.iter().filter_map(Yaml::as_str).map(String::from).collect(),
            Yaml::String(line) => line.split_whitespace().map(String::from).collect(),
            _ => ["serve", "--config", IMAGE_CONFIG].map(String::from).to_vec(),
        };
        let config_path = command.windows(2).find(|w| w[0] == "--config").map(|w| w[1].clone());
        p.check(command.first().is_some_and(|c| c == "serve") && config_path.is_some(), || {
            format!("{w}: command must be serve --config FILE")
        });
        let Some(config_path) = config_path else { continue };
        let Some((source, _)) = compose_mounts(s).into_iter().find(|(_, target)| *target == config_path) else {
            p.add(format!("{w}: mounts no config file at {config_path}"));
            continue;
        };
        config_files.insert(source.clone());
        let Some(text) = files.get(&source) else {
            p.add(format!("{w}: mounts {source}, which is not a file of deploy/"));
            continue;
        };
        let env = compose_env(s);
        let config = match Config::parse(text, &source, &|var| env.get(var).cloned()) {
            Ok(config) => config,
            Err(e) => {
                p.add(format!("{w}: {source} does not parse with the service's environment: {e}"));
                continue;
            }
        };
        check_listeners(&source, &config, p);
        listen_ports.insert(config.server.listen.port());
        issuers.insert(config.authorization_server.issuer.clone());
        let provided = |var: &str| env.contains_key(var);
        let Some(pg) = check_postgres_store(&source, text, &provided, &format!("the environment of {name}"), p) else {
            continue;
        };
        let Some(db) = services.get(&pg.host) else {
            p.add(format!("{w}: the storage.url host {:?} is not a service of {COMPOSE}", pg.host));
            continue;
        };
        databases.insert(pg.host.clone());
        p.check(text_at(s, &["depends_on", &pg.host, "condition"]) == Some("service_healthy"), || {
            format!("{w}: must depend on {} with condition: service_healthy (it migrates the schema at start)", pg.host)
        });
        let db_env = compose_env(db);
        p.check(pg.password_env.is_empty() || db_env.get("POSTGRES_PASSWORD") == env.get(&pg.password_env), || {
            format!("{w}: {} must be the {} service's POSTGRES_PASSWORD", pg.password_env, pg.host)
        });
        let user = db_env.get("POSTGRES_USER").map_or("postgres", String::as_str);
        let database = db_env.get("POSTGRES_DB").map_or(user, String::as_str);
        p.check(pg.user == user && pg.db == database, || {
            format!(
                "{w}: storage.url names user {:?} and database {:?}, the {} service creates {user:?} and {database:?}",
                pg.user, pg.db, pg.host
            )
        });
    }
    p.check(config_files.len() == 1, || {
        format!("{COMPOSE}: the replicas must share one config file, not {config_files:?}")
    });
    let named_volumes: BTreeSet<&str> =
        at(&doc, &["volumes"]).as_hash().map(|h| h.keys().filter_map(Yaml::as_str).collect()).unwrap_or_default();
    for host in &databases {
        let db = &services[host];
        let w = format!("{COMPOSE}: service {host}");
        p.check(text_at(db, &["image"]).is_some_and(|i| i.starts_with("postgres:")), || {
            format!("{w}: must run a postgres image")
        });
        p.check(
            !at(db, &["healthcheck", "test"]).is_badvalue() && at(db, &["healthcheck", "disable"]).is_badvalue(),
            || format!("{w}: needs a healthcheck, which the replicas wait for"),
        );
        let data = compose_mounts(db).into_iter().find(|(_, target)| target == "/var/lib/postgresql/data");
        p.check(data.is_some_and(|(source, _)| named_volumes.contains(source.as_str())), || {
            format!("{w}: keep /var/lib/postgresql/data on a named volume (top-level volumes:)")
        });
    }
    let port = listen_ports.into_iter().next().unwrap_or(0);
    check_load_balancer(files, &services, &replicas, port, &issuers, p);
}

/// nginx round-robins over every replica, on the address the issuer names.
fn check_load_balancer(
    files: &Files,
    services: &BTreeMap<String, Yaml>,
    replicas: &[&str],
    replica_port: u16,
    issuers: &BTreeSet<String>,
    p: &mut Problems,
) {
    let lbs: Vec<(&String, &Yaml)> =
        services.iter().filter(|(_, s)| text_at(s, &["image"]).is_some_and(|i| i.starts_with("nginx"))).collect();
    let [(lb, service)] = lbs[..] else {
        p.add(format!("{COMPOSE}: needs one load balancer (an nginx service), found {}", lbs.len()));
        return;
    };
    let w = format!("{COMPOSE}: service {lb}");
    let conf = compose_mounts(service).into_iter().find(|(_, target)| target.starts_with("/etc/nginx/"));
    let Some((conf, text)) = conf.and_then(|(source, _)| Some((source.clone(), files.get(&source)?))) else {
        p.add(format!("{w}: mounts no nginx config of deploy/ under /etc/nginx/"));
        return;
    };
    let directives = nginx_directives(text);
    let mut upstreams: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (blocks, words) in &directives {
        let upstream = blocks.last().and_then(|b| b.strip_prefix("upstream "));
        if let (Some(upstream), [directive, address, ..]) = (upstream, words.as_slice())
            && directive == "server"
        {
            upstreams.entry(upstream.to_string()).or_default().insert(address.clone());
        }
    }
    let proxied: Vec<&str> = directives
        .iter()
        .filter(|(_, words)| words.first().is_some_and(|d| d == "proxy_pass"))
        .filter_map(|(_, words)| words.get(1)?.strip_prefix("http://"))
        .collect();
    let want: BTreeSet<String> = replicas.iter().map(|r| format!("{r}:{replica_port}")).collect();
    p.check(!proxied.is_empty(), || format!("{conf}: no proxy_pass to an upstream"));
    for name in proxied {
        let got = upstreams.get(name).cloned().unwrap_or_default();
        p.check(got == want, || format!("{conf}: upstream {name} must name every replica, {want:?}, not {got:?}"));
    }
    let listen: Vec<String> = directives
        .iter()
        .filter(|(blocks, words)| blocks.last().is_some_and(|b| b == "server") && words[0] == "listen")
        .filter_map(|(_, words)| Some(words.get(1)?.rsplit(':').next()?.to_string()))
        .collect();
    let published =
        compose_ports(service).into_iter().find(|(_, container)| listen.contains(container)).map(|(host, _)| host);
    let Some(published) = published else {
        p.add(format!("{w}: publishes none of the ports nginx listens on, {listen:?}"));
        return;
    };
    for issuer in issuers {
        let uri = issuer.parse::<http::Uri>().ok();
        let host = uri.as_ref().and_then(http::Uri::host).unwrap_or_default();
        let port = uri.as_ref().and_then(http::Uri::port_u16).map(|p| p.to_string());
        p.check(
            ["localhost", "127.0.0.1", "[::1]"].contains(&host) && port.as_deref() == Some(published.as_str()),
            || format!("{COMPOSE}: the issuer {issuer} is not the load balancer's address, localhost:{published}"),
        );
    }
}

// ---------------------------------------------------------------------------
// Metric names.

/// The series `src/telemetry/metrics/mod.rs` exports: every `"portcullis_..."` name, a
/// histogram's as its `_bucket`, `_sum` and `_count` series.
fn exported_series(metrics_rs: &str, p: &mut Problems) -> BTreeSet<String> {
    let literal_after = |text: &str| -> Option<String> {
        let start = text.find('"')? + 1;
        let end = start + text[start..].find('"')?;
        Some(text[start..end].to_string())
    };
    let names: BTreeSet<String> = metrics_rs
        .match_indices("\"portcullis_")
        .filter_map(|(i, _)| literal_after(&metrics_rs[i..]))
        .filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        .collect();
    let histograms: BTreeSet<String> = metrics_rs
        .match_indices("HistogramOpts::new(")
        .filter_map(|(i, m)| literal_after(&metrics_rs[i + m.len()..]))
        .collect();
    p.check(names.len() >= 5 && !histograms.is_empty(), || {
        format!(
            "src/telemetry/metrics/mod.rs: found only {names:?} (histograms {histograms:?}); has the way metrics are defined changed?"
        )
    });
    let mut series = BTreeSet::new();
    for n in names {
        if histograms.contains(&n) {
            series.extend(["_bucket", "_sum", "_count"].map(|s| format!("{n}{s}")));
        } else {
            series.insert(n);
        }
    }
    series
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, aggregations, keywords, label names, label values or durations.
fn promql_metrics(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "atan2"];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    // The index just past the string literal that starts at `i`.
    let skip_string = |mut i: usize| {
        let quote = b[i];
        i += 1;
        while i < b.len() && b[i] != quote {
            i += if b[i] == b'\\' && quote != b'`' { 2 } else { 1 };
        }
        (i + 1).min(b.len())
    };
    // The index just past the bracket closing the one at `i`, skipping strings.
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        b.len()
    };
    let next_char = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        (i, b.get(i).copied())
    };
    let mut metrics = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'"' | b'\'' | b'`' => i = skip_string(i),
            b'#' => i = expr[i..].find('\n').map_or(b.len(), |n| i + n),
            b'$' => {
                // A Grafana variable.
                i += 1;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let (after, next) = next_char(i);
                if LABEL_LISTS.contains(&word) {
                    if next == Some(b'(') {
                        i = skip_group(after, b'(', b')');
                    }
                } else if KEYWORDS.contains(&word) || AGGREGATIONS.contains(&word) || next == Some(b'(') {
                    // an operator, or a function's name
                } else {
                    metrics.push(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    metrics
}

/// Problems with the metrics one expression names.
fn check_expr(w: &str, expr: &str, known: &BTreeSet<String>, allowed_future: &[&str], p: &mut Problems) {
    let names = promql_metrics(expr);
    p.check(!names.is_empty(), || format!("{w}: {expr:?} selects no metric"));
    for n in names {
        p.check(known.contains(&n) || allowed_future.contains(&n.as_str()), || {
            format!(
                "{w}: {n:?} is not a metric src/telemetry/metrics/mod.rs exports (histograms: _bucket, _sum, _count)"
            )
        });
    }
}

// ---------------------------------------------------------------------------
// Prometheus.

fn check_prometheus(files: &Files, known: &BTreeSet<String>, p: &mut Problems) {
    let dir = "deploy/prometheus";
    for stray in files.in_dir(dir, ".yml") {
        p.add(format!("{dir}/{stray}: name it .yaml"));
    }
    for name in files.in_dir(dir, ".yaml") {
        let rel = format!("{dir}/{name}");
        let docs = yaml_docs(files, &rel, p);
        p.check(!docs.is_empty(), || format!("{rel}: no YAML document"));
        for doc in &docs {
            p.check(!at(doc, &["groups"]).is_badvalue() || !at(doc, &["scrape_configs"]).is_badvalue(), || {
                format!("{rel}: neither a rule file (groups:) nor a scrape config (scrape_configs:)")
            });
        }
    }
    let alerts = "deploy/prometheus/alerts.yaml";
    let docs = yaml_docs(files, alerts, p);
    let text = files.get(alerts).unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut future_rules = 0;
    for doc in &docs {
        let groups = list_at(doc, &["groups"]);
        p.check(!groups.is_empty(), || format!("{alerts}: groups: is empty"));
        for g in groups {
            let group = text_at(g, &["name"]).unwrap_or_default();
            p.check(!group.is_empty(), || format!("{alerts}: a group has no name"));
            let rules = list_at(g, &["rules"]);
            p.check(!rules.is_empty(), || format!("{alerts}: group {group:?} has no rules"));
            for r in rules {
                let alert = text_at(r, &["alert"]).unwrap_or_default();
                let w = format!("{alerts}: alert {alert:?}");
                p.check(!alert.is_empty() && alert.bytes().all(|c| c.is_ascii_alphanumeric()), || {
                    format!("{w}: every rule needs an alert name in CamelCase")
                });
                p.check(names.insert(alert.to_string()), || format!("{w}: defined twice"));
                let expr = text_at(r, &["expr"]).unwrap_or_default();
                let future: Vec<&str> =
                    FUTURE_METRICS.into_iter().filter(|m| promql_metrics(expr).iter().any(|n| n == m)).collect();
                future_rules += usize::from(future.iter().any(|m| !known.contains(*m)));
                check_expr(&w, expr, known, &future, p);
                exprs.push(expr.to_string());
                p.check(matches!(text_at(r, &["labels", "severity"]), Some("critical" | "warning" | "info")), || {
                    format!("{w}: labels.severity must be critical, warning or info")
                });
                p.check(text_at(r, &["annotations", "summary"]).is_some_and(|s| !s.is_empty()), || {
                    format!("{w}: needs annotations.summary")
                });
                if let Some(d) = text_at(r, &["for"]) {
                    p.check(humantime::parse_duration(d).is_ok() || d == "0m", || {
                        format!("{w}: for {d:?} is no duration")
                    });
                }
            }
        }
    }
    // Each alert on a metric still to come carries the marker comment.
    p.check(text.matches(FUTURE_MARKER).count() >= future_rules, || {
        format!("{alerts}: {future_rules} alerts use metrics not exported yet; mark each with {FUTURE_MARKER:?}")
    });
    // What issue 4 asks alerts for.
    let all = exprs.join("\n");
    for (needle, what) in [
        ("upstream_error|upstream_timeout|unavailable", "the 5xx error ratio"),
        ("portcullis_request_duration_seconds_bucket", "p99 latency"),
        ("histogram_quantile(0.99", "p99 latency"),
        ("outcome=~\"upstream_error|upstream_timeout\"", "upstream failures"),
        ("portcullis_denials_total", "a spike in denials"),
        ("result=\"invalid_client\"", "invalid_client bursts"),
        ("outcome=\"login_throttled\"", "login throttling"),
        ("portcullis_tls_certificate_expiry_timestamp_seconds", "certificate expiry"),
        ("14 * 86400", "certificate expiry within 14 days"),
        ("portcullis_tls_certificate_expiry_timestamp_seconds > 0", "certificate expiry, not without TLS"),
        ("portcullis_tls_reload_total{result=\"error\"}", "certificate reload failures"),
        ("portcullis_config_reload_total{result=\"error\"}", "reload failures"),
    ] {
        p.check(all.contains(needle), || format!("{alerts}: no alert for {what} (no expression has {needle:?})"));
    }

    let scrape = "deploy/prometheus/scrape.yaml";
    for doc in yaml_docs(files, scrape, p) {
        let jobs = list_at(&doc, &["scrape_configs"]);
        p.check(!jobs.is_empty(), || format!("{scrape}: scrape_configs is empty"));
        let mut seen = BTreeSet::new();
        for job in jobs {
            let name = text_at(job, &["job_name"]).unwrap_or_default();
            p.check(!name.is_empty() && seen.insert(name), || format!("{scrape}: job names must be set and unique"));
            p.check(text_at(job, &["metrics_path"]) == Some("/metrics"), || {
                format!("{scrape}: job {name:?} must scrape /metrics")
            });
            for sc in list_at(job, &["static_configs"]) {
                for t in list_at(sc, &["targets"]) {
                    p.check(t.as_str().is_some_and(|t| t.ends_with(&format!(":{ADMIN_PORT}"))), || {
                        format!("{scrape}: job {name:?} target {t:?} is not on the admin port {ADMIN_PORT}")
                    });
                }
            }
            p.check(
                !at(job, &["static_configs"]).is_badvalue() || !at(job, &["kubernetes_sd_configs"]).is_badvalue(),
                || format!("{scrape}: job {name:?} has no targets"),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Grafana.

fn check_dashboard(files: &Files, known: &BTreeSet<String>, p: &mut Problems) {
    let rel = "deploy/grafana/portcullis-dashboard.json";
    let Some(text) = files.get(rel) else {
        p.add(format!("{rel}: missing"));
        return;
    };
    let dash: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.add(format!("{rel}: not JSON: {e}"));
            return;
        }
    };
    p.check(dash["title"].as_str().is_some_and(|t| !t.is_empty()), || format!("{rel}: no title"));
    p.check(dash["uid"].as_str().is_some_and(|t| !t.is_empty() && t.len() <= 40), || format!("{rel}: no uid"));
    p.check(dash["schemaVersion"].as_i64().is_some_and(|v| (36..=41).contains(&v)), || {
        format!("{rel}: schemaVersion {} is not a current one (~39)", dash["schemaVersion"])
    });
    let vars = dash["templating"]["list"].as_array().cloned().unwrap_or_default();
    let ds_var = vars.iter().find(|v| v["type"] == "datasource" && v["query"] == "prometheus");
    let ds_name = ds_var.and_then(|v| v["name"].as_str()).unwrap_or_default().to_string();
    p.check(!ds_name.is_empty(), || format!("{rel}: no datasource template variable for Prometheus"));
    let ds_ref = |ds: &serde_json::Value| {
        let uid = ds["uid"].as_str().unwrap_or_default();
        !ds_name.is_empty() && (uid == format!("${{{ds_name}}}") || uid == format!("${ds_name}"))
    };
    let mut exprs = Vec::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or_default();
        let w = format!("{rel}: variable {name:?}");
        p.check(ds_ref(&v["datasource"]), || format!("{w}: must use the datasource variable"));
        let query = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
        // label_values(SELECTOR, label): the selector is PromQL.
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map_or(query, |(sel, _)| sel);
        check_expr(&w, selector, known, &[], p);
        exprs.push(selector.to_string());
    }

    let mut panels = Vec::new();
    let mut stack: Vec<serde_json::Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        panels.push(panel);
    }
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let w = format!("{rel}: panel {title:?}");
        p.check(!title.is_empty(), || format!("{rel}: a panel has no title"));
        p.check(panel["id"].as_i64().is_some_and(|id| ids.insert(id)), || format!("{w}: id missing or repeated"));
        let grid = &panel["gridPos"];
        let (x, width) = (grid["x"].as_i64().unwrap_or(-1), grid["w"].as_i64().unwrap_or(0));
        p.check(
            x >= 0 && width > 0 && x + width <= 24 && grid["h"].as_i64().is_some() && grid["y"].as_i64().is_some(),
            || format!("{w}: gridPos must lie within the 24 columns"),
        );
        if panel["type"] == "row" {
            continue;
        }
        p.check(ds_ref(&panel["datasource"]), || format!("{w}: must use the datasource variable"));
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        p.check(!targets.is_empty(), || format!("{w}: no queries"));
        for t in &targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            check_expr(&w, expr, known, &[], p);
            exprs.push(expr.to_string());
        }
    }
    // The panels asked for, by what they query.
    let all = exprs.join("\n");
    for needle in [
        "portcullis_requests_total",
        "outcome=~\"upstream_error|upstream_timeout|unavailable\"",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_upstream_duration_seconds_bucket",
        "portcullis_requests_in_flight",
        "sum by (reason) (rate(portcullis_denials_total",
        "portcullis_validation_cache_requests_total",
        "portcullis_validation_cache_entries",
        "sum by (grant_type) (rate(portcullis_tokens_issued_total",
        "sum by (result) (rate(portcullis_token_requests_total",
        "portcullis_authorization_flow_total",
    ] {
        p.check(all.contains(needle), || format!("{rel}: no panel queries {needle:?}"));
    }
}

// ---------------------------------------------------------------------------
// systemd.

/// The unit's settings by section, in order.
fn unit_settings(text: &str, p: &mut Problems, rel: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            p.check(!line.ends_with('\\'), || format!("{rel}:{}: keep settings on one line", n + 1));
            sections.entry(section.clone()).or_default().push((k.trim().to_string(), v.trim().to_string()));
        } else {
            p.add(format!("{rel}:{}: not a section header or key=value: {line:?}", n + 1));
        }
    }
    sections
}

fn check_systemd(files: &Files, p: &mut Problems) {
    let rel = "deploy/systemd/portcullis.service";
    let Some(text) = files.get(rel) else {
        p.add(format!("{rel}: missing"));
        return;
    };
    let sections = unit_settings(text, p, rel);
    let values = |section: &str, key: &str| -> Vec<String> {
        sections.get(section).into_iter().flatten().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    };
    // The value in force: the last assignment.
    let last = |key: &str| values("Service", key).pop();
    // A list setting: assignments add up, an empty one resets.
    let list = |key: &str| -> Option<Vec<String>> {
        let assigned = values("Service", key);
        (!assigned.is_empty()).then(|| {
            assigned.iter().fold(Vec::new(), |mut acc, v| {
                if v.is_empty() {
                    acc.clear();
                } else {
                    acc.extend(v.split_whitespace().map(str::to_string));
                }
                acc
            })
        })
    };
    let yes = |v: Option<String>| matches!(v.as_deref(), Some("yes" | "true" | "on" | "1"));
    for key in ["DynamicUser", "ProtectHome", "PrivateTmp", "NoNewPrivileges"] {
        p.check(yes(last(key)), || format!("{rel}: [Service] needs {key}=yes"));
    }
    for (key, want) in [
        ("ProtectSystem", "strict"),
        ("StateDirectory", "portcullis"),
        ("ConfigurationDirectory", "portcullis"),
        ("ExecStart", "/usr/local/bin/portcullis serve --config /etc/portcullis/portcullis.toml"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/portcullis/env"),
    ] {
        p.check(last(key).as_deref() == Some(want), || format!("{rel}: [Service] needs {key}={want}"));
    }
    let reload = last("ExecReload").unwrap_or_default();
    p.check(reload.contains("kill") && reload.contains("-HUP") && reload.contains("MAINPID"), || {
        format!("{rel}: ExecReload must send SIGHUP to $MAINPID")
    });
    let stop = last("TimeoutStopSec").unwrap_or_default();
    let stop = stop.parse::<u64>().map(Duration::from_secs).or_else(|_| humantime::parse_duration(&stop));
    p.check(stop.is_ok_and(|s| s > DRAIN_TIMEOUT), || format!("{rel}: TimeoutStopSec must exceed the drain timeout"));
    p.check(list("CapabilityBoundingSet").is_some_and(|c| c.is_empty()), || {
        format!("{rel}: CapabilityBoundingSet= must be empty (no capabilities)")
    });
    p.check(list("AmbientCapabilities").is_none_or(|c| c.is_empty()), || {
        format!("{rel}: AmbientCapabilities beyond an empty bounding set do nothing; keep them together")
    });
    let families: BTreeSet<String> = list("RestrictAddressFamilies").unwrap_or_default().into_iter().collect();
    p.check(families == BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"].map(String::from)), || {
        format!("{rel}: RestrictAddressFamilies must be AF_INET AF_INET6 AF_UNIX")
    });
    p.check(values("Service", "SystemCallFilter").iter().any(|v| v == "@system-service"), || {
        format!("{rel}: SystemCallFilter=@system-service is missing")
    });
    p.check(values("Unit", "Description").iter().any(|d| !d.is_empty()), || format!("{rel}: [Unit] Description"));
    p.check(values("Install", "WantedBy").iter().any(|w| w == "multi-user.target"), || {
        format!("{rel}: [Install] WantedBy=multi-user.target")
    });
}

// ---------------------------------------------------------------------------
// Dockerfile.

/// The instructions of a Dockerfile: (keyword, arguments), continuation
/// lines joined and comments left out.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let full = std::mem::take(&mut pending);
                let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
            }
        }
    }
    out
}

fn check_dockerfile(files: &Files, p: &mut Problems) {
    let rel = "Dockerfile";
    let Some(text) = files.get(rel) else {
        p.add(format!("{rel}: missing"));
        return;
    };
    let instructions = dockerfile_instructions(text);
    let froms: Vec<usize> = instructions.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    p.check(froms.len() >= 2, || format!("{rel}: needs two FROM stages (build, runtime), found {}", froms.len()));
    let (Some(&first), Some(&last)) = (froms.first(), froms.last()) else { return };
    let build_stage = &instructions[first..last];
    let runtime = &instructions[last..];
    let from_words: Vec<&str> = instructions[first].1.split_whitespace().collect();
    let builder = match from_words.as_slice() {
        [.., as_kw, name] if as_kw.eq_ignore_ascii_case("as") => *name,
        _ => "",
    };
    p.check(!builder.is_empty(), || format!("{rel}: name the build stage (FROM image AS build)"));
    let builds: Vec<&String> =
        build_stage.iter().filter(|(k, a)| k == "RUN" && a.contains("cargo build")).map(|(_, a)| a).collect();
    p.check(
        !builds.is_empty() && builds.iter().all(|a| a.contains("cargo build --release --locked --bin portcullis")),
        || format!("{rel}: the build stage must run cargo build --release --locked --bin portcullis"),
    );

    // The runtime stage: unprivileged.
    let image = runtime[0].1.split_whitespace().find(|w| !w.starts_with("--")).unwrap_or_default();
    let users: Vec<&str> = runtime.iter().filter(|(k, _)| k == "USER").map(|(_, a)| a.as_str()).collect();
    let root = |u: &str| matches!(u.split(':').next(), Some("root" | "0"));
    p.check(users.last().map_or(image.ends_with(":nonroot"), |u| !root(u)), || {
        format!("{rel}: the runtime stage must run as non-root (USER, or a :nonroot image)")
    });

    let copies: Vec<Vec<&str>> =
        runtime.iter().filter(|(k, _)| k == "COPY").map(|(_, a)| a.split_whitespace().collect()).collect();
    // Where the build stage leaves the binary: target/release/portcullis, or
    // wherever a RUN copies it from there.
    let mut built = BTreeSet::new();
    for (_, a) in build_stage.iter().filter(|(k, _)| k == "RUN") {
        let words: Vec<&str> = a.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if w.ends_with("target/release/portcullis") {
                built.insert(w.to_string());
                built.extend(words.get(i + 1).filter(|n| n.starts_with('/')).map(|n| n.to_string()));
            }
        }
    }
    let from_build = format!("--from={builder}");
    p.check(
        copies.iter().any(|c| {
            c.contains(&from_build.as_str())
                && c.last() == Some(&"/usr/local/bin/portcullis")
                && c.len() >= 2
                && built.iter().any(|b| b.ends_with(c[c.len() - 2]))
        }),
        || {
            format!(
                "{rel}: the runtime stage must COPY {from_build} the binary ({built:?}) to /usr/local/bin/portcullis"
            )
        },
    );
    let config_copied = |src: &str, dest: &str| copies.iter().any(|c| c.contains(&src) && c.last() == Some(&dest));
    p.check(config_copied("deploy/portcullis.container.toml", "/etc/portcullis/portcullis.toml"), || {
        format!("{rel}: must COPY deploy/portcullis.container.toml to /etc/portcullis/portcullis.toml")
    });
    p.check(copies.iter().any(|c| c.iter().any(|w| w.trim_end_matches('/') == "config")), || {
        format!("{rel}: must COPY config/ into the image")
    });
    // Sources copied from the build context exist.
    for (k, a) in &instructions {
        let words: Vec<&str> = a.split_whitespace().collect();
        if (k == "COPY" || k == "ADD") && !words.iter().any(|w| w.starts_with("--from=")) {
            let sources = words.iter().filter(|w| !w.starts_with("--")).collect::<Vec<_>>();
            for src in sources.iter().take(sources.len().saturating_sub(1)) {
                p.check(files.root.join(src).exists(), || format!("{rel}: COPY source {src} does not exist"));
            }
        }
    }

    let exec_form = |keyword: &str| -> Option<Vec<String>> {
        runtime.iter().rev().find(|(k, _)| k == keyword).and_then(|(_, a)| serde_json::from_str(a).ok())
    };
    p.check(exec_form("ENTRYPOINT") == Some(vec!["/usr/local/bin/portcullis".to_string()]), || {
        format!("{rel}: ENTRYPOINT [\"/usr/local/bin/portcullis\"] (exec form, so SIGTERM reaches it)")
    });
    p.check(exec_form("CMD").is_some_and(|c| c == ["serve", "--config", "/etc/portcullis/portcullis.toml"]), || {
        format!("{rel}: CMD [\"serve\", \"--config\", \"/etc/portcullis/portcullis.toml\"]")
    });
    let exposed: BTreeSet<&str> =
        runtime.iter().filter(|(k, _)| k == "EXPOSE").flat_map(|(_, a)| a.split_whitespace()).collect();
    for port in ["8080", "9090"] {
        p.check(exposed.contains(port), || format!("{rel}: EXPOSE {port}"));
    }

    let ignore = ".dockerignore";
    let patterns: Vec<&str> = files
        .get(ignore)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    p.check(patterns.contains(&"target"), || format!("{ignore}: must leave out target/"));
    for needed in ["src", "config", "deploy", "Cargo.toml", "Cargo.lock"] {
        p.check(!patterns.contains(&needed), || format!("{ignore}: must not leave out {needed}, the build needs it"));
    }
}

// ---------------------------------------------------------------------------
// The checks can fail.

#[test]
fn promql_metric_names_are_extracted() {
    let cases: [(&str, &[&str]); 7] = [
        (
            r#"sum by (route, outcome) (rate(portcullis_requests_total{job=~"$job", outcome="x"}[$__rate_interval]))"#,
            &["portcullis_requests_total"],
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(portcullis_request_duration_seconds_bucket[5m]))) > 1",
            &["portcullis_request_duration_seconds_bucket"],
        ),
        ("rate(a_total[5m] offset 1h) / on (job) group_left (x) b unless c and bool d", &["a_total", "b", "c", "d"]),
        ("(portcullis_x - time()) < 14 * 86400", &["portcullis_x"]),
        ("absent(up)", &["up"]),
        (r#"sum(rate(x{a="sum(y)", b='{z}'}[1m]))"#, &["x"]),
        ("count_values(\"v\", foo) # a comment naming bar\n", &["foo"]),
    ];
    for (expr, want) in cases {
        assert_eq!(promql_metrics(expr), want, "{expr}");
    }
}

#[test]
fn unknown_metrics_are_refused() {
    let mut p = Problems::default();
    let known = exported_series(include_str!("../src/telemetry/metrics/mod.rs"), &mut p);
    assert!(p.0.is_empty(), "{:?}", p.0);
    assert!(known.contains("portcullis_requests_total"));
    assert!(known.contains("portcullis_request_duration_seconds_bucket"));
    assert!(!known.contains("portcullis_request_duration_seconds"), "a histogram is scraped as _bucket/_sum/_count");
    for bad in [
        "up",
        "rate(portcullis_request_total[5m])",
        "portcullis_request_duration_seconds",
        "portcullis_tokens_issued_total_bucket",
        "rate(portcullis_never_defined_total[5m])",
        "sum(rate(portcullis_requests_total[5m])) / sum(rate(nonexistent[5m]))",
        "vector(1)",
    ] {
        let mut p = Problems::default();
        check_expr("test", bad, &known, &[], &mut p);
        assert!(!p.0.is_empty(), "{bad} was accepted");
    }
    let mut p = Problems::default();
    check_expr("test", "rate(portcullis_config_reload_total[5m])", &known, &FUTURE_METRICS, &mut p);
    assert!(p.0.is_empty(), "an allow-listed future metric was refused: {:?}", p.0);
}

#[test]
fn mutations_are_caught() {
    let files = Files::load();
    let dep = "deploy/kubernetes/deployment.yaml";
    let alerts = "deploy/prometheus/alerts.yaml";
    let dash = "deploy/grafana/portcullis-dashboard.json";
    let unit = "deploy/systemd/portcullis.service";
    let docker = "Dockerfile";
    let cm = "deploy/kubernetes/configmap.yaml";
    let rdep = "deploy/kubernetes-replicas/deployment.yaml";
    let rcm = "deploy/kubernetes-replicas/configmap.yaml";
    let rpdb = "deploy/kubernetes-replicas/pdb.yaml";
    let hpa = "deploy/kubernetes-replicas/hpa.yaml";
    let compose = "compose.yaml";
    let ctoml = "deploy/compose/portcullis.toml";
    let nginx = "deploy/compose/nginx.conf";
    let pg_url = "url = \"postgres://portcullis@postgres:5432/portcullis\"\n";
    let pg_env = "password_env = \"PORTCULLIS_DATABASE_PASSWORD\"\n";
    // (file, text, replacement, a problem that must then be reported)
    let mutations = [
        (dep, "path: /healthz", "path: /health", "livenessProbe must GET /healthz"),
        (dep, "path: /readyz", "path: /healthz", "readinessProbe must GET /readyz"),
        (dep, "              port: 9090", "              port: http", "livenessProbe must use the admin port"),
        (dep, "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot must be true"),
        (dep, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"),
        (dep, "drop: [\"ALL\"]", "drop: [\"NET_RAW\"]", "capabilities.drop"),
        (dep, "            limits:", "            limitz:", "resources.limits.memory"),
        (dep, "type: Recreate", "type: RollingUpdate", "Recreate"),
        (dep, "replicas: 1", "replicas: 3", "replicas must be 1"),
        (dep, "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 20", "terminationGracePeriod"),
        (dep, "prometheus.io/scrape: \"true\"", "prometheus.io/scrape: true", "annotations must be a map of strings"),
        (
            dep,
            "claimName: portcullis-data",
            "claimName: portcullis-state",
            "PersistentVolumeClaim \"portcullis-state\"",
        ),
        (dep, "mountPath: /var/lib/portcullis", "mountPath: /data", "not on the PersistentVolumeClaim"),
        (dep, "name: portcullis-client-secrets", "name: client-secrets", "envFrom names Secret"),
        (dep, "spec:\n  replicas", "spec: [\n  replicas", "not valid YAML"),
        ("deploy/kubernetes/service.yaml", "targetPort: http", "targetPort: 8081", "port http must reach"),
        ("deploy/kubernetes/service.yaml", "port: 80", "port: 8000", "port named http = 80"),
        (
            "deploy/kubernetes/pdb.yaml",
            "      app.kubernetes.io/instance: portcullis",
            "      x: y",
            "selector must match",
        ),
        ("deploy/kubernetes/pdb.yaml", "maxUnavailable: 1", "minAvailable: 1", "maxUnavailable: 1"),
        ("deploy/kubernetes/servicemonitor.yaml", "port: admin", "port: metrics", "endpoint on port admin"),
        (
            "deploy/kubernetes/servicemonitor.yaml",
            "      app.kubernetes.io/name: portcullis",
            "      x: y",
            "selects no Service",
        ),
        ("deploy/kubernetes/kustomization.yaml", "  - pdb.yaml\n", "", "does not list pdb.yaml"),
        ("deploy/kubernetes/kustomization.yaml", "  - pdb.yaml\n", "  - pdb.yaml\n  - gone.yaml\n", "gone.yaml"),
        ("deploy/kubernetes/pvc.yaml", "kind: PersistentVolumeClaim", "kind: ", "has no kind"),
        ("deploy/kubernetes/pvc.yaml", "name: portcullis-data", "name: Portcullis_Data", "DNS label"),
        (cm, "listen = \"0.0.0.0:9090\"", "listen = \"0.0.0.0:9091\"", "admin.listen is 0.0.0.0:9091"),
        (cm, "listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:8080\"", "server.listen is 127.0.0.1:8080"),
        (cm, "client_secret_env = \"EXAMPLE_SERVICE_SECRET\"", "client_secret_env = \"OTHER\"", "does not parse"),
        (cm, "[cache]", "[cache]\n    ttll = \"1s\"", "does not parse"),
        ("deploy/kubernetes/secret.yaml", "REPLACE-ME-with-a-long-random-secret", "hunter2", "placeholder"),
        ("deploy/kubernetes/secret.yaml", "type: kubernetes.io/tls", "type: Opaque", "kubernetes.io/tls"),
        ("deploy/portcullis.container.toml", "0.0.0.0:8080", "127.0.0.1:8080", "server.listen"),
        ("deploy/portcullis.container.toml", "sqlite:///var/lib/portcullis/", "sqlite://data/", "storage.url"),
        (alerts, "rate(portcullis_denials_total[5m])", "rate(portcullis_denial_total[5m])", "portcullis_denial_total"),
        (alerts, "result=\"invalid_client\"", "result=\"invalid_grant\"", "invalid_client bursts"),
        (alerts, "severity: critical", "severity: page", "labels.severity"),
        (alerts, "\ngroups:", "\ngroupz:", "neither a rule file"),
        ("deploy/prometheus/scrape.yaml", "example.internal:9090", "example.internal:8080", "admin port"),
        (dash, "portcullis_validation_cache_entries{", "portcullis_cache_entries{", "portcullis_cache_entries"),
        (dash, "\"type\": \"datasource\"", "\"type\": \"custom\"", "no datasource template variable"),
        (dash, "\"schemaVersion\": 39", "\"schemaVersion\": 16", "schemaVersion"),
        (dash, "histogram_quantile(0.99,", "histogram_quantile(0.98,", "histogram_quantile(0.99,"),
        (dash, "\"panels\": [", "\"panels\": [}", "not JSON"),
        (
            "src/telemetry/metrics/mod.rs",
            "\"portcullis_requests_in_flight\"",
            "\"portcullis_in_flight\"",
            "requests_in_flight",
        ),
        (unit, "ProtectSystem=strict", "ProtectSystem=full", "ProtectSystem=strict"),
        (unit, "DynamicUser=yes", "DynamicUser=no", "DynamicUser=yes"),
        (unit, "NoNewPrivileges=yes", "", "NoNewPrivileges=yes"),
        (unit, "ExecReload=/bin/kill -HUP $MAINPID", "ExecReload=/bin/true", "ExecReload"),
        (unit, "CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_ADMIN\n", "CapabilityBoundingSet"),
        (unit, "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "RestrictAddressFamilies=AF_INET", "AF_INET6"),
        (unit, "SystemCallFilter=@system-service", "SystemCallFilter=@basic-io", "@system-service"),
        (unit, "TimeoutStopSec=35", "TimeoutStopSec=10", "TimeoutStopSec"),
        (unit, "EnvironmentFile=-/etc/portcullis/env", "", "EnvironmentFile"),
        (docker, "FROM rust:1-bookworm AS build", "", "two FROM stages"),
        (docker, "USER 65532:65532", "USER root", "non-root"),
        (docker, "--from=build /out/portcullis", "--from=build /out/other", "the binary"),
        (docker, "--locked --bin portcullis \\\n    && mkdir", "--bin portcullis \\\n    && mkdir", "cargo build"),
        (docker, "CMD [\"serve\"", "CMD [\"check\"", "CMD"),
        (docker, "EXPOSE 8080 9090", "EXPOSE 8080", "EXPOSE 9090"),
        (docker, "COPY config/ ", "COPY conf/ ", "conf/ does not exist"),
        (".dockerignore", "target/", "", "target/"),
        // The replicas on PostgreSQL.
        (rdep, "replicas: 3", "replicas: 1", "replicas must be at least 2"),
        (rdep, "maxUnavailable: 0", "maxUnavailable: 1", "maxUnavailable: 0"),
        (rdep, "type: RollingUpdate", "type: Recreate", "RollingUpdate"),
        (rdep, "path: /healthz", "path: /readyz", "livenessProbe must GET /healthz"),
        (rdep, "topologyKey: kubernetes.io/hostname", "topologyKey: kubernetes.io/os", "spread the pods"),
        (
            rdep,
            "        - name: tmp\n          emptyDir:",
            "        - name: tmp\n          persistentVolumeClaim:\n            claimName: x\n          emptyDir:",
            "no PersistentVolumeClaim",
        ),
        (rdep, "name: portcullis-database", "name: database", "names Secret \"database\""),
        (
            rdep,
            "valueFrom:\n                secretKeyRef:\n                  name: portcullis-database\n                  key: password",
            "value: hunter2",
            "must come from a Secret",
        ),
        (rpdb, "maxUnavailable: 1", "minAvailable: 3", "blocks every node drain"),
        (rpdb, "maxUnavailable: 1", "maxUnavailable: 2", "keep at least 2"),
        (hpa, "kind: Deployment\n    name: portcullis", "kind: Deployment\n    name: gateway", "scaleTargetRef"),
        (hpa, "minReplicas: 3", "minReplicas: 2", "minReplicas 2 must be at least"),
        (rcm, "portcullis@postgres", "portcullis:hunter2@postgres", "does not parse"),
        (
            rcm,
            &format!("{pg_url}    {pg_env}"),
            "url = \"postgres://portcullis:hunter2@postgres:5432/portcullis\"\n",
            "carries a password",
        ),
        // The compose try.
        (
            ctoml,
            &format!("{pg_url}{pg_env}"),
            "url = \"postgres://portcullis:x@postgres:5432/portcullis\"\n",
            "password",
        ),
        (ctoml, "@postgres:5432", "@db:5432", "not a service"),
        (ctoml, "http://localhost:8080", "http://localhost:8081", "not the load balancer's address"),
        (compose, "condition: service_healthy", "condition: service_started", "service_healthy"),
        (compose, "    healthcheck:", "    x-healthcheck:", "needs a healthcheck"),
        (compose, "POSTGRES_DB: portcullis", "POSTGRES_DB: gateway", "creates"),
        (compose, "- postgres-data:/var/lib", "- ./pgdata:/var/lib", "named volume"),
        (
            compose,
            "  portcullis-2:\n    <<: *portcullis\n",
            "  portcullis-2:\n    <<: *portcullis\n    volumes:\n      - ./deploy/portcullis.container.toml:/etc/portcullis/portcullis.toml:ro\n",
            "share one config file",
        ),
        (compose, "  portcullis-2:\n    <<: *portcullis\n", "  portcullis-2:\n", "at least two"),
        (compose, "\"127.0.0.1:8080:8080\"", "\"127.0.0.1:8080:80\"", "publishes none of the ports"),
        (nginx, "server portcullis-2:8080", "server portcullis-1:8081", "must name every replica"),
        (nginx, "proxy_pass http://portcullis;", "proxy_pass http://gateway;", "must name every replica"),
    ];
    let mut mutations = mutations.to_vec();
    let mut p = Problems::default();
    let known = exported_series(files.get("src/telemetry/metrics/mod.rs").unwrap_or_default(), &mut p);
    if FUTURE_METRICS.iter().any(|m| !known.iter().any(|k| k.starts_with(m))) {
        // The marker is required only while a metric is still to come.
        mutations.push((alerts, FUTURE_MARKER, "# later", "mark each"));
    }
    let mut missed = Vec::new();
    for (file, from, to, expected) in mutations {
        let found = problems(&files.mutated(file, from, to));
        if !found.iter().any(|p| p.contains(expected)) {
            missed.push(format!("{file}: {from:?} -> {to:?} should report {expected:?}, got {found:#?}"));
        }
    }
    assert!(missed.is_empty(), "mutations not caught:\n{}", missed.join("\n"));
}

#[test]
fn the_runtime_image_without_user_relies_on_a_nonroot_tag() {
    let files = Files::load();
    let without_user = files.mutated("Dockerfile", "USER 65532:65532\n", "");
    assert!(problems(&without_user).is_empty(), "the :nonroot image alone is non-root");
    let root = without_user.mutated("Dockerfile", "cc-debian12:nonroot", "cc-debian12:latest");
    assert!(problems(&root).iter().any(|p| p.contains("non-root")), "a root image without USER was accepted");
}

/// Paths the docs name exist.
#[test]
fn deploy_readme_names_existing_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for readme in ["deploy/README.md", "deploy/kubernetes/README.md", "deploy/kubernetes-replicas/README.md"] {
        let text = std::fs::read_to_string(root.join(readme)).unwrap_or_else(|e| panic!("{readme}: {e}"));
        let base = Path::new(readme).parent().expect("a folder");
        for word in text.split(|c: char| c.is_whitespace() || "`()[]|,".contains(c)) {
            let word = word.trim_end_matches(['.', ':']);
            let local = ["deploy/", "config/"].iter().any(|p| word.starts_with(p))
                || (word.ends_with(".yaml") && !word.contains('/'));
            if local && !word.contains('*') {
                let exists = root.join(word).exists() || root.join(base).join(word).exists();
                assert!(exists, "{readme} names {word}, which does not exist");
            }
        }
    }
}
