//! An environment's `deploy:`, checked: which components run on the Docker Engine and
//! how (container names, ports, env, volumes, restart policy, replicas, health check).

use std::collections::BTreeMap;
use std::time::Duration;

use cascade_core::{FileId, Span};

use super::{closest, parse_duration, Node, Resolver};
use crate::ast::{DeployAst, DeployComponentAst, Entries, HealthAst, SecretAst, S};
use crate::error::ManifestError;
use crate::model::{
    Deploy, DeployComponent, DeployHost, HealthCheck, PortMap, SecretSource, Volume, LOCAL_HOST,
};
use crate::source::source_span;

/// Defaults of a health check, chosen for services that start in seconds.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_RETRIES: u32 = 10;
/// More would be a cluster scheduler's job, not a deploy command's.
const MAX_REPLICAS: i64 = 16;
const RESTART_POLICIES: [&str; 4] = ["no", "always", "unless-stopped", "on-failure"];

/// Where one entry of `deploy.components` is, and the hosts it may name.
struct Deployed<'a> {
    file: FileId,
    env: &'a str,
    comp: &'a str,
    /// The component's key under `deploy.components`.
    kspan: Span,
    declared_hosts: &'a [&'a str],
}

/// What components take from each other: a container name, or a host port, is used
/// once across them all.
#[derive(Default)]
struct Taken {
    names: BTreeMap<String, Span>,
    host_ports: BTreeMap<(String, u16), Span>,
}

impl Resolver<'_> {
    fn bad_deploy(&mut self, message: String, label: &str, help: Option<String>, span: Span) {
        self.bad_deploy_at(message, label, help, span, None);
    }

    fn bad_deploy_at(
        &mut self,
        message: String,
        label: &str,
        help: Option<String>,
        span: Span,
        other: Option<Span>,
    ) {
        let label = label.to_string();
        self.push(
            |src| ManifestError::BadDeploy {
                message,
                src,
                span: source_span(span),
                label,
                help,
                other: other.map(source_span),
            },
            span,
        );
    }

    /// Checks `deploy:` once the recipes are known (a deployed component needs an image).
    pub(super) fn deploy(
        &mut self,
        file: FileId,
        ast: S<DeployAst>,
        env: &str,
        nodes: &BTreeMap<&str, Node>,
    ) -> Option<Deploy> {
        let before = self.diags.len();
        let span = self.span(file, &ast);
        let DeployAst {
            engine,
            hosts,
            max_unavailable,
            components,
        } = ast.value;
        let (engine, hosts, declared) = self.deploy_fleet(file, engine, hosts);
        let max_unavailable = self.max_unavailable(file, max_unavailable);
        let host_names: Vec<&str> = declared.iter().map(String::as_str).collect();
        let Some(components) = components else {
            self.missing("components", "`deploy`", span);
            return None;
        };
        let out = self.deploy_components(file, env, components, nodes, &host_names);
        (self.diags.len() == before).then_some(Deploy {
            engine,
            hosts,
            max_unavailable,
            components: out,
        })
    }

    /// `engine:` or `hosts:` (not both): the one engine, the hosts, and every host name
    /// written, even one whose URL is wrong (a placement on it is not a second problem).
    fn deploy_fleet(
        &mut self,
        file: FileId,
        engine: Option<S<String>>,
        hosts: Option<S<Entries<S<String>>>>,
    ) -> (Option<String>, Vec<DeployHost>, Vec<String>) {
        let engine_span = engine.as_ref().map(|e| self.span(file, e));
        let engine = engine.and_then(|e| {
            let espan = self.span(file, &e);
            self.engine_url(&e.value, espan).then_some(e.value)
        });
        let mut declared: Vec<String> = Vec::new();
        let hosts = match (hosts, engine_span) {
            (Some(h), Some(espan)) => {
                let hspan = self.span(file, &h);
                self.bad_deploy_at(
                    "`engine` and `hosts` are both given".into(),
                    "a fleet",
                    Some("name every engine under `hosts:` (`engine` is the one engine of a deploy without `hosts:`)".into()),
                    hspan,
                    Some(espan),
                );
                Vec::new()
            }
            (Some(h), None) => {
                let (hosts, names) = self.deploy_hosts(file, h);
                declared = names;
                hosts
            }
            (None, _) => vec![DeployHost {
                name: LOCAL_HOST.to_string(),
                engine: engine.clone(),
            }],
        };
        if declared.is_empty() {
            declared = hosts.iter().map(|h| h.name.clone()).collect();
        }
        (engine, hosts, declared)
    }

    /// `max_unavailable:`, 1 by default.
    fn max_unavailable(&mut self, file: FileId, ast: Option<S<i64>>) -> u32 {
        let Some(m) = ast else { return 1 };
        let mspan = self.span(file, &m);
        if m.value < 1 {
            self.bad_deploy(
                format!("`max_unavailable: {}` would never replace anything", m.value),
                "expected 1 or more",
                Some("how many hosts of a component are replaced at once; 1 (the default) rolls one host at a time".into()),
                mspan,
            );
        }
        m.value.clamp(1, i64::from(u32::MAX)) as u32
    }

    /// `deploy.components`, each a component of the environment with an image, sorted by
    /// name.
    fn deploy_components(
        &mut self,
        file: FileId,
        env: &str,
        ast: S<Entries<S<DeployComponentAst>>>,
        nodes: &BTreeMap<&str, Node>,
        declared_hosts: &[&str],
    ) -> Vec<DeployComponent> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        let mut taken = Taken::default();
        for (key, value) in ast.value.0 {
            let kspan = self.span(file, &key);
            let comp = key.value;
            if let Some(&first) = seen.get(&comp) {
                self.duplicate(&comp, "`deploy.components`", kspan, first);
                continue;
            }
            seen.insert(comp.clone(), kspan);
            if !self.deployable(&comp, kspan, env, nodes) {
                continue;
            }
            let at = Deployed {
                file,
                env,
                comp: &comp,
                kspan,
                declared_hosts,
            };
            if let Some(c) = self.deploy_component(&at, value, &mut taken) {
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.component.cmp(&b.component));
        out
    }

    /// Whether `comp` is a component of the environment (a problem when not); one
    /// without an image is a problem too, but its entry is still checked.
    fn deployable(
        &mut self,
        comp: &str,
        kspan: Span,
        env: &str,
        nodes: &BTreeMap<&str, Node>,
    ) -> bool {
        match nodes.get(comp) {
            None => {
                let help = match closest(comp, nodes.keys().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("the components of `{env}` are its `sources:`"),
                };
                self.bad_deploy(
                    format!("`{comp}` is not a component of `{env}`"),
                    "unknown component",
                    Some(help),
                    kspan,
                );
                false
            }
            Some(node) => {
                if node.recipe.as_ref().is_some_and(|r| r.image.is_none()) {
                    self.bad_deploy(
                        format!("`{comp}` has no image to deploy"),
                        "its recipe declares no `image:`",
                        Some(format!("add `image:` to `recipes/{comp}.yaml`")),
                        kspan,
                    );
                }
                true
            }
        }
    }

    /// A Docker Engine's URL: `unix:///path`, `tcp://` to the loopback (plain TCP to
    /// another machine is unauthenticated), or `ssh://user@host[:port]`.
    fn engine_url(&mut self, url: &str, span: Span) -> bool {
        let problem = engine_problem(url);
        if let Some((message, label)) = problem.clone() {
            self.bad_deploy(
                message,
                label,
                Some("write `ssh://user@host[:port]` (Docker's ssh transport: keys from the ssh agent or ~/.ssh, the host's key checked against known_hosts), `unix:///path/to/docker.sock` or `tcp://127.0.0.1:PORT`".into()),
                span,
            );
        }
        problem.is_none()
    }

    /// `hosts:`: name → engine, in the order written.
    fn deploy_hosts(
        &mut self,
        file: FileId,
        ast: S<Entries<S<String>>>,
    ) -> (Vec<DeployHost>, Vec<String>) {
        let mut out = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        let mut names = Vec::new();
        let span = self.span(file, &ast);
        for (key, url) in ast.value.0 {
            let kspan = self.span(file, &key);
            if let Some(&first) = seen.get(&key.value) {
                self.duplicate(&key.value, "`deploy.hosts`", kspan, first);
                continue;
            }
            seen.insert(key.value.clone(), kspan);
            names.push(key.value.clone());
            if !super::is_name(&key.value) {
                self.bad_deploy(
                    format!("`{}` is not a host name", key.value),
                    "expected letters, digits, `_` or `-`",
                    None,
                    kspan,
                );
                continue;
            }
            let uspan = self.span(file, &url);
            if self.engine_url(&url.value, uspan) {
                out.push(DeployHost {
                    name: key.value,
                    engine: Some(url.value),
                });
            }
        }
        if out.is_empty() && seen.is_empty() {
            self.bad_deploy(
                "`hosts` names no host".into(),
                "empty",
                Some("name each Docker Engine: `node1: ssh://deploy@10.0.0.1`".into()),
                span,
            );
        }
        (out, names)
    }

    /// A component's `hosts:`, each declared; default every host.
    fn component_hosts(
        &mut self,
        file: FileId,
        comp: &str,
        ast: Option<S<Vec<S<String>>>>,
        declared: &[&str],
    ) -> Vec<String> {
        let Some(ast) = ast else {
            return declared.iter().map(|h| h.to_string()).collect();
        };
        let lspan = self.span(file, &ast);
        let before = self.diags.len();
        let mut chosen: BTreeMap<String, Span> = BTreeMap::new();
        for h in ast.value {
            let hspan = self.span(file, &h);
            if let Some(&first) = chosen.get(&h.value) {
                self.duplicate(&h.value, &format!("the hosts of `{comp}`"), hspan, first);
            } else if !declared.contains(&h.value.as_str()) {
                let help = match closest(&h.value, declared.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!(
                        "the hosts are {}",
                        declared
                            .iter()
                            .map(|d| format!("`{d}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.bad_deploy(
                    format!("`{}` is not a host of this deploy", h.value),
                    "not under `deploy.hosts`",
                    Some(help),
                    hspan,
                );
            } else {
                chosen.insert(h.value, hspan);
            }
        }
        if chosen.is_empty() && self.diags.len() == before {
            self.bad_deploy(
                format!("`{comp}` runs on no host"),
                "empty",
                Some("leave `hosts` out to run it on every host".into()),
                lspan,
            );
        }
        // In the fleet's order, so every component rolls its hosts the same way.
        declared
            .iter()
            .filter(|d| chosen.contains_key(**d))
            .map(|d| d.to_string())
            .collect()
    }

    /// `secrets:`: variable name → `{ env: VAR }` or `{ file: path }`.
    fn secrets(
        &mut self,
        file: FileId,
        comp: &str,
        ast: S<Entries<S<SecretAst>>>,
        env: &BTreeMap<String, String>,
    ) -> BTreeMap<String, SecretSource> {
        let mut out = BTreeMap::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for (key, value) in ast.value.0 {
            let kspan = self.span(file, &key);
            let name = key.value;
            if let Some(&first) = seen.get(&name) {
                self.duplicate(&name, &format!("the secrets of `{comp}`"), kspan, first);
                continue;
            }
            seen.insert(name.clone(), kspan);
            let var_ok = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !var_ok {
                self.bad_deploy(
                    format!("`{name}` is not a variable name"),
                    "a secret is passed as this variable",
                    None,
                    kspan,
                );
                continue;
            }
            if env.contains_key(&name) {
                self.bad_deploy(
                    format!("`{name}` is both in `env` and in `secrets` of `{comp}`"),
                    "also a plain variable",
                    Some("keep it in `secrets` only: `env` values are written in the manifest for all to read".into()),
                    kspan,
                );
                continue;
            }
            let vspan = self.span(file, &value);
            let SecretAst {
                env: from_env,
                file: from_file,
            } = value.value;
            match (from_env, from_file) {
                (Some(v), None) if !v.value.trim().is_empty() => {
                    out.insert(name, SecretSource::Env(v.value));
                }
                (None, Some(f)) if !f.value.trim().is_empty() => {
                    out.insert(name, SecretSource::File(f.value));
                }
                _ => self.bad_deploy(
                    format!("the secret `{name}` needs exactly one source"),
                    "expected `{ env: VAR }` or `{ file: path }`",
                    Some("a secret's value is never written in a manifest: name the variable or the file that holds it".into()),
                    vspan,
                ),
            }
        }
        out
    }

    /// One entry of `deploy.components`; `None` when it has a problem.
    fn deploy_component(
        &mut self,
        at: &Deployed<'_>,
        ast: S<DeployComponentAst>,
        taken: &mut Taken,
    ) -> Option<DeployComponent> {
        let (file, comp) = (at.file, at.comp);
        let before = self.diags.len();
        let DeployComponentAst {
            container,
            ports,
            env: env_entries,
            volumes,
            restart,
            replicas,
            health,
            hosts,
            secrets,
        } = ast.value;
        let hosts = self.component_hosts(file, comp, hosts, at.declared_hosts);
        let replicas = self.replicas(file, replicas);
        let (container, cspan) = self.container_name(at, container);
        self.claim_names(&container, cspan, replicas, taken);
        let port_list = self.ports(at, ports, replicas, taken);
        let env_map = env_entries.map_or_else(BTreeMap::new, |e| {
            self.env(
                file,
                &format!("the deploy env of `{comp}`"),
                e.value.0,
                false,
            )
        });
        let mut volume_list = Vec::new();
        for v in volumes.map(|v| v.value).unwrap_or_default() {
            let vspan = self.span(file, &v);
            if let Some(v) = self.volume(&v.value, vspan) {
                volume_list.push(v);
            }
        }
        let restart = self.restart(file, restart);
        let health = health.and_then(|h| self.health(file, comp, h));
        let secrets = secrets.map_or_else(BTreeMap::new, |s| self.secrets(file, comp, s, &env_map));
        (self.diags.len() == before).then_some(DeployComponent {
            component: comp.to_string(),
            container,
            ports: port_list,
            env: env_map,
            volumes: volume_list,
            restart,
            replicas,
            health,
            hosts,
            secrets,
        })
    }

    /// `replicas:`, 1 by default.
    fn replicas(&mut self, file: FileId, ast: Option<S<i64>>) -> u32 {
        let Some(r) = ast else { return 1 };
        let rspan = self.span(file, &r);
        if !(1..=MAX_REPLICAS).contains(&r.value) {
            self.bad_deploy(
                format!("`{}` is not a number of replicas", r.value),
                &format!("expected 1 to {MAX_REPLICAS}"),
                None,
                rspan,
            );
        }
        r.value.clamp(1, MAX_REPLICAS) as u32
    }

    /// `container:`, by default `<env>-<component>`, and where it is written (the
    /// component's key for the default).
    fn container_name(&mut self, at: &Deployed<'_>, ast: Option<S<String>>) -> (String, Span) {
        let Some(c) = ast else {
            return (format!("{}-{}", at.env, at.comp), at.kspan);
        };
        let cspan = self.span(at.file, &c);
        if !is_container_name(&c.value) {
            self.bad_deploy(
                format!("`{}` is not a container name", c.value),
                "expected letters, digits, `_`, `.` or `-`, starting with a letter or digit",
                None,
                cspan,
            );
        }
        (c.value, cspan)
    }

    /// Takes the container name of every replica (`<name>-<i>` when there are several).
    fn claim_names(&mut self, container: &str, cspan: Span, replicas: u32, taken: &mut Taken) {
        let spec_names: Vec<String> = if replicas == 1 {
            vec![container.to_string()]
        } else {
            (1..=replicas).map(|i| format!("{container}-{i}")).collect()
        };
        for n in spec_names {
            if let Some(&first) = taken.names.get(&n) {
                self.bad_deploy_at(
                    format!("container name `{n}` is used twice"),
                    "this container",
                    Some("each deployed container needs its own name".into()),
                    cspan,
                    Some(first),
                );
            } else {
                taken.names.insert(n, cspan);
            }
        }
    }

    /// `ports:`, sorted; a fixed host port is taken once across components, and only by
    /// a component of one replica.
    fn ports(
        &mut self,
        at: &Deployed<'_>,
        ast: Option<S<Vec<S<String>>>>,
        replicas: u32,
        taken: &mut Taken,
    ) -> Vec<PortMap> {
        let comp = at.comp;
        let mut port_list = Vec::new();
        for p in ast.map(|p| p.value).unwrap_or_default() {
            let pspan = self.span(at.file, &p);
            let Some(port) = self.port_map(&p.value, pspan) else {
                continue;
            };
            if let Some(hp) = port.host_port {
                if replicas > 1 {
                    self.bad_deploy(
                        format!("`{comp}` has {replicas} replicas but a fixed host port {hp}"),
                        "every replica would need this port",
                        Some(format!(
                            "publish `\"{}\"` alone and the engine picks a port per replica",
                            port.container
                        )),
                        pspan,
                    );
                }
                let key = (port.host_ip.clone(), hp);
                if let Some(&first) = taken.host_ports.get(&key) {
                    self.bad_deploy_at(
                        format!("host port {}:{hp} is published twice", port.host_ip),
                        "this port",
                        Some("each host port can be bound by one container".into()),
                        pspan,
                        Some(first),
                    );
                    continue;
                }
                taken.host_ports.insert(key, pspan);
            }
            port_list.push(port);
        }
        port_list.sort();
        port_list
    }

    /// `restart:`, `unless-stopped` by default.
    fn restart(&mut self, file: FileId, ast: Option<S<String>>) -> String {
        let Some(r) = ast else {
            return "unless-stopped".to_string();
        };
        let rspan = self.span(file, &r);
        if !RESTART_POLICIES.contains(&r.value.as_str()) {
            self.bad_deploy(
                format!("`{}` is not a restart policy", r.value),
                "unknown policy",
                Some(format!(
                    "one of {}",
                    RESTART_POLICIES
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                rspan,
            );
        }
        r.value
    }

    /// `"CONTAINER"`, `"HOST:CONTAINER"` or `"IP:HOST:CONTAINER"`; the host IP is
    /// 127.0.0.1 unless written, so nothing is reachable from outside by accident.
    fn port_map(&mut self, text: &str, span: Span) -> Option<PortMap> {
        let parts: Vec<&str> = text.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [i, h, c] => (Some(*i), Some(*h), *c),
            _ => (None, None, ""),
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
        let bad = |r: &mut Self, label: &str| {
            r.bad_deploy(
                format!("`{text}` is not a port mapping"),
                label,
                Some(
                    "write `\"8080\"` (the engine picks a host port), `\"18080:8080\"` or `\"127.0.0.1:18080:8080\"`; the host side is on 127.0.0.1 unless an address is given"
                        .into(),
                ),
                span,
            );
        };
        let Some(container) = port(container) else {
            bad(self, "expected a container port from 1 to 65535");
            return None;
        };
        let host_port = match host {
            None | Some("") => None,
            Some(h) => match port(h) {
                Some(p) => Some(p),
                None => {
                    bad(self, "expected a host port from 1 to 65535");
                    return None;
                }
            },
        };
        let host_ip = match ip {
            None => "127.0.0.1".to_string(),
            Some(i) => match i.parse::<std::net::Ipv4Addr>() {
                Ok(a) => a.to_string(),
                Err(_) => {
                    bad(self, "expected an IPv4 address");
                    return None;
                }
            },
        };
        Some(PortMap {
            host_ip,
            host_port,
            container,
        })
    }

    /// `SOURCE:/target[:ro|:rw]`, the source an absolute host path or a volume name.
    fn volume(&mut self, text: &str, span: Span) -> Option<Volume> {
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, None),
            [s, t, m] => (*s, *t, Some(*m)),
            _ => ("", "", None),
        };
        let source_ok = (source.starts_with('/') && !source.split('/').any(|p| p == ".."))
            || is_container_name(source);
        let target_ok = target.starts_with('/') && !target.split('/').any(|p| p == "..");
        let read_only = match mode {
            None | Some("rw") => Some(false),
            Some("ro") => Some(true),
            Some(_) => None,
        };
        match (source_ok, target_ok, read_only) {
            (true, true, Some(read_only)) => Some(Volume {
                source: source.to_string(),
                target: target.to_string(),
                read_only,
            }),
            _ => {
                self.bad_deploy(
                    format!("`{text}` is not a volume"),
                    "expected `SOURCE:/path/in/container[:ro]`",
                    Some(
                        "SOURCE is an absolute host path (a bind mount) or a volume name; paths have no `..`"
                            .into(),
                    ),
                    span,
                );
                None
            }
        }
    }

    fn health(&mut self, file: FileId, comp: &str, ast: S<HealthAst>) -> Option<HealthCheck> {
        let span = self.span(file, &ast);
        let HealthAst {
            http,
            command,
            interval,
            timeout,
            retries,
            start_period,
        } = ast.value;
        let probe = self.probe(
            file,
            &format!("the health check of `{comp}`"),
            (http, command),
            span,
            Self::bad_deploy,
        );
        let interval = self.deploy_duration(file, interval, false, DEFAULT_HEALTH_INTERVAL);
        let timeout = self.deploy_duration(file, timeout, false, DEFAULT_HEALTH_TIMEOUT);
        let start_period = self.deploy_duration(file, start_period, true, Duration::ZERO);
        let retries = match retries {
            None => Some(DEFAULT_HEALTH_RETRIES),
            Some(r) => {
                let rspan = self.span(file, &r);
                let ok = u32::try_from(r.value)
                    .ok()
                    .filter(|r| (1..=1000).contains(r));
                if ok.is_none() {
                    self.bad_deploy(
                        format!("`{}` is not a number of retries", r.value),
                        "expected 1 to 1000",
                        None,
                        rspan,
                    );
                }
                ok
            }
        };
        Some(HealthCheck {
            probe: probe?,
            interval: interval?,
            timeout: timeout?,
            retries: retries?,
            start_period: start_period?,
        })
    }

    /// A duration of a health check: `500ms`, `2s`, `1m30s`, a number of seconds; `0s`
    /// only where `zero` allows it.
    fn deploy_duration(
        &mut self,
        file: FileId,
        v: Option<S<String>>,
        zero: bool,
        default: Duration,
    ) -> Option<Duration> {
        let Some(v) = v else { return Some(default) };
        let span = self.span(file, &v);
        let d = parse_deploy_duration(&v.value).filter(|d| zero || !d.is_zero());
        if d.is_none() {
            self.bad_deploy(
                format!("`{}` is not a duration", v.value),
                if zero {
                    "expected a duration"
                } else {
                    "expected a duration above zero"
                },
                Some("write `500ms`, `2s`, `1m30s` or a number of seconds".into()),
                span,
            );
        }
        d
    }
}

/// `NNNms`, `0`/`0s`, or what [`parse_duration`] reads.
fn parse_deploy_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) {
            return ms.parse::<u64>().ok().map(Duration::from_millis);
        }
        return None;
    }
    if s == "0" || s == "0s" {
        return Some(Duration::ZERO);
    }
    parse_duration(s)
}

/// Docker's container (and volume) name grammar: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
/// What is wrong with a Docker Engine URL, if anything: (message, label).
fn engine_problem(url: &str) -> Option<(String, &'static str)> {
    if let Some(path) = url.strip_prefix("unix://") {
        return (!path.starts_with('/')).then(|| {
            (
                format!("`{url}` is not an absolute socket path"),
                "expected `unix:///path`",
            )
        });
    }
    if let Some(rest) = url.strip_prefix("tcp://") {
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        return (!matches!(host, "127.0.0.1" | "localhost" | "[::1]")).then(|| {
            (
                format!("`{url}` is plain TCP to another machine"),
                "unauthenticated and unencrypted",
            )
        });
    }
    if let Some(rest) = url.strip_prefix("ssh://") {
        let Some((user, hostport)) = rest.split_once('@') else {
            return Some((
                format!("`{url}` names no user"),
                "expected `ssh://user@host[:port]`",
            ));
        };
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        let port_ok = hostport
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0));
        let plain = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !plain(user) || !plain(host) || !port_ok {
            return Some((
                format!("`{url}` is not `ssh://user@host[:port]`"),
                "expected a user, a host and an optional port",
            ));
        }
        return None;
    }
    Some((
        format!("`{url}` is not a Docker Engine endpoint"),
        "expected `ssh://`, `unix://` or `tcp://`",
    ))
}

fn is_container_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && s.len() <= 200
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s: &str| parse_deploy_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Some(500));
        assert_eq!(ms("2s"), Some(2000));
        assert_eq!(ms("1m30s"), Some(90_000));
        assert_eq!(ms("0s"), Some(0));
        assert_eq!(ms("3"), Some(3000));
        assert_eq!(ms("ms"), None);
        assert_eq!(ms("1.5s"), None);
        assert_eq!(ms("-1s"), None);
    }

    #[test]
    fn container_names() {
        assert!(is_container_name("scratch-services"));
        assert!(is_container_name("a.b_c"));
        assert!(!is_container_name("-x"));
        assert!(!is_container_name("a/b"));
        assert!(!is_container_name(""));
    }
}
