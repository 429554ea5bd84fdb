//! The storage node's configuration: a TOML file, overridden by flags and
//! `RAP_*` environment variables (see `rap-configstore serve --help`).
//!
//! ```toml
//! node-id = "s1"
//! cluster-id = "c1"
//! listen = "127.0.0.1:7001"        # gRPC: RaftService + AuthorityService
//! http-listen = "127.0.0.1:9001"   # /metrics /healthz /readyz
//! data-dir = "/var/lib/rap/s1"
//!
//! [labels]
//! region = "eu"
//! zone = "eu-1"
//! host = "rack3-7"
//!
//! [timing]
//! heartbeat-ms = 100
//! election-timeout-min-ms = 500
//! election-timeout-max-ms = 1000
//!
//! [tls]                            # mTLS between storage nodes and clients
//! ca = "/etc/rap/ca.pem"
//! cert = "/etc/rap/node.pem"
//! key = "/etc/rap/node.key"
//!
//! [cache]                          # only on a cache replica (no Raft)
//! trust-root = "/etc/rap/trust-root.bin"
//! voters = ["s1=10.0.0.1:7001", "s2=10.0.0.2:7001", "s3=10.0.0.3:7001"]
//! ```

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Longest accepted config file (64 KiB): it is a handful of keys.
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// A config that does not make sense, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);

/// The whole configuration of one storage node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// This node's RAP node id.
    pub node_id: String,
    /// The cluster whose authority group this node serves.
    pub cluster_id: String,
    /// gRPC listen address (RaftService + AuthorityService).
    pub listen: SocketAddr,
    /// Address other nodes dial; defaults to `listen`.
    pub advertise: Option<String>,
    /// HTTP listen address for `/metrics`, `/healthz`, `/readyz`.
    pub http_listen: SocketAddr,
    /// Directory of the Raft log and state machine (`raft.redb`).
    pub data_dir: PathBuf,
    /// Failure-domain labels.
    pub labels: Labels,
    /// Raft timing.
    pub timing: Timing,
    /// mTLS files; required unless `insecure-plaintext` is set.
    pub tls: Option<Tls>,
    /// Development only: serve and dial without TLS (then nobody's
    /// identity is checked). Refused on a non-loopback `listen` address
    /// unless `insecure-plaintext-allow-non-loopback` is set too.
    pub insecure_plaintext: bool,
    /// Lets `insecure-plaintext` listen on a non-loopback address: anyone
    /// who reaches the port can call every RPC. Logged loudly at start.
    pub insecure_plaintext_allow_non_loopback: bool,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Run as a cache replica of the cluster (no Raft): hold and serve the
    /// shards placement assigns this node, filled from the voters.
    pub cache: Option<Cache>,
    /// Fault-injection tests only: dial peer `<node-id>` at `<host:port>`
    /// instead of its member address (a proxy of that one link); the
    /// connection is still pinned to the peer's certificate.
    pub dial_via: Vec<String>,
}

/// A cache replica's settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Cache {
    /// The cluster's genesis trust root (the file `bootstrap --trust-root`
    /// was given): every envelope is verified from it.
    pub trust_root: PathBuf,
    /// The voters to fill from, `<node-id>=<host:port>`, tried in turn.
    pub voters: Vec<String>,
}

impl Cache {
    /// The voters, parsed.
    pub fn sources(&self) -> Result<Vec<rap_authority::replica::follow::Source>, ConfigError> {
        use rap_authority::replica::follow::{SOURCES_MAX, Source};
        if self.voters.is_empty() || self.voters.len() > SOURCES_MAX {
            return Err(ConfigError(format!(
                "cache.voters: 1 to {SOURCES_MAX} voters (<node-id>=<host:port>), got {}",
                self.voters.len()
            )));
        }
        self.voters
            .iter()
            .map(|voter| {
                let (id, address) = voter.split_once('=').ok_or_else(|| {
                    ConfigError(format!(
                        "cache.voters: {voter:?} is not <node-id>=<host:port>"
                    ))
                })?;
                let node_id = rap_proto::ids::NodeId::new(id)
                    .map_err(|e| ConfigError(format!("cache.voters: {e}")))?;
                match address.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                    _ => {
                        return Err(ConfigError(format!(
                            "cache.voters: {address:?} is not host:port"
                        )));
                    }
                }
                Ok(Source {
                    node_id,
                    address: address.to_string(),
                })
            })
            .collect()
    }
}

/// Failure-domain labels of this node.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Labels {
    /// Region, e.g. `eu`.
    pub region: String,
    /// Zone within the region, e.g. `eu-1`.
    pub zone: String,
    /// Host (or rack) within the zone.
    pub host: String,
}

/// Raft timing. `validate` enforces election timeout > 3 × heartbeat.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Quorum lease: a leader not acknowledged by a quorum for this long
    /// refuses writes before proposing. Defaults to the minimum election
    /// timeout.
    pub lease_ms: Option<u64>,
    /// HTTP/2 keepalive interval of every Raft channel.
    pub keepalive_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            lease_ms: None,
            keepalive_ms: 1000,
        }
    }
}

impl Timing {
    /// The effective quorum lease.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms.unwrap_or(self.election_timeout_min_ms)
    }
}

/// Paths of the PEM files for mTLS.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Tls {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Log output format (one owner: `rap_core::logging`).
pub use rap_core::logging::LogFormat;

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: String::new(),
            cluster_id: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            advertise: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
            data_dir: PathBuf::new(),
            labels: Labels::default(),
            timing: Timing::default(),
            tls: None,
            insecure_plaintext: false,
            insecure_plaintext_allow_non_loopback: false,
            log_format: LogFormat::Text,
            cache: None,
            dial_via: Vec::new(),
        }
    }
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    /// The TOML document [`Config::from_toml`] reads back as this
    /// configuration (for tools and tests that start nodes).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError(e.to_string()))
    }

    /// The address other nodes dial.
    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// [`Config::dial_via`], parsed: at most one address per peer, at
    /// most [`rap_authority::network::PEERS_MAX`] peers.
    pub fn dial_via(&self) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
        let mut map = std::collections::BTreeMap::new();
        if self.dial_via.len() > rap_authority::network::PEERS_MAX {
            return Err(ConfigError(format!(
                "dial-via: at most {} peers, got {}",
                rap_authority::network::PEERS_MAX,
                self.dial_via.len()
            )));
        }
        for entry in &self.dial_via {
            let (id, address) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("dial-via {entry:?}: <node-id>=<host:port>")))?;
            rap_proto::ids::NodeId::new(id)
                .map_err(|e| ConfigError(format!("dial-via {entry:?}: {e}")))?;
            address
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError(format!("dial-via {entry:?}: {e}")))?;
            if map.insert(id.to_string(), address.to_string()).is_some() {
                return Err(ConfigError(format!("dial-via: {id} is given twice")));
            }
        }
        Ok(map)
    }

    /// Refuses combinations that cannot work, saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        rap_proto::ids::NodeId::new(self.node_id.as_str())
            .map_err(|e| ConfigError(format!("node-id: {e}")))?;
        rap_proto::ids::ClusterId::new(self.cluster_id.as_str())
            .map_err(|e| ConfigError(format!("cluster-id: {e}")))?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("data-dir is required".into()));
        }
        self.dial_via()?;
        let t = &self.timing;
        if t.heartbeat_ms == 0 {
            return Err(ConfigError("timing.heartbeat-ms must be > 0".into()));
        }
        if t.election_timeout_min_ms <= 3 * t.heartbeat_ms {
            return Err(ConfigError(format!(
                "timing.election-timeout-min-ms ({}) must be more than 3 × heartbeat-ms ({})",
                t.election_timeout_min_ms, t.heartbeat_ms
            )));
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            return Err(ConfigError(format!(
                "timing.election-timeout-max-ms ({}) must exceed election-timeout-min-ms ({})",
                t.election_timeout_max_ms, t.election_timeout_min_ms
            )));
        }
        if t.lease_ms() == 0 || t.lease_ms() > t.election_timeout_min_ms {
            return Err(ConfigError(format!(
                "timing.lease-ms ({}) must be in 1..=election-timeout-min-ms ({}): a longer lease would outlive a new leader's election",
                t.lease_ms(),
                t.election_timeout_min_ms
            )));
        }
        if t.keepalive_ms == 0 {
            return Err(ConfigError("timing.keepalive-ms must be > 0".into()));
        }
        if let Some(cache) = &self.cache {
            if cache.trust_root.as_os_str().is_empty() {
                return Err(ConfigError(
                    "cache.trust-root is required: the cluster's genesis trust root (`rapctl cluster create` wrote it)".into(),
                ));
            }
            cache.sources()?;
        }
        if self.insecure_plaintext
            && !self.listen.ip().is_loopback()
            && !self.insecure_plaintext_allow_non_loopback
        {
            return Err(ConfigError(format!(
                "insecure-plaintext on the non-loopback address {} would let anyone who reaches it call every RPC: listen on 127.0.0.1, use [tls], or set insecure-plaintext-allow-non-loopback = true (--insecure-plaintext-allow-non-loopback)",
                self.listen
            )));
        }
        match (&self.tls, self.insecure_plaintext) {
            (Some(_), true) => Err(ConfigError(
                "set either [tls] or insecure-plaintext = true, not both".into(),
            )),
            (None, false) => Err(ConfigError(
                "[tls] ca/cert/key are required (or insecure-plaintext = true for development; `rap-configstore dev-ca` makes a development CA)".into(),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: `dial-via` takes one `<node-id>=<host:port>` per peer and
    // refuses anything else at start, naming the entry. Method: parse
    // good and bad lists.
    #[test]
    fn dial_via_is_checked() {
        let mut config = Config::from_toml(base()).expect("base");
        config.dial_via = vec!["s2=127.0.0.1:4000".into(), "s3=127.0.0.1:4001".into()];
        let parsed = config.dial_via().expect("good");
        assert_eq!(parsed["s2"], "127.0.0.1:4000");
        config.validate().expect("valid");
        for bad in [
            vec!["s2".to_string()],
            vec!["s2=nowhere".to_string()],
            vec!["BAD ID=127.0.0.1:1".to_string()],
            vec!["s2=127.0.0.1:1".to_string(), "s2=127.0.0.1:2".to_string()],
        ] {
            config.dial_via = bad.clone();
            let error = config.validate().expect_err("refused");
            assert!(error.0.contains("dial-via"), "{bad:?}: {}", error.0);
        }
    }

    fn base() -> &'static str {
        "node-id = \"s1\"\ncluster-id = \"c1\"\ndata-dir = \"/tmp/s1\"\ninsecure-plaintext = true\n"
    }

    // Goal: a minimal file parses with defaults and validates; unknown keys
    // are refused. Method: parse, validate, then add a typo'd key.
    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let config = Config::from_toml(base()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.timing.lease_ms(), 500);
        assert!(Config::from_toml(&format!("{}heartbeat = 5\n", base())).is_err());
    }

    // Goal: a configuration written as TOML reads back the same, cache and
    // TLS sections included. Method: to_toml, from_toml, compare the
    // written forms.
    #[test]
    fn writes_what_it_reads() {
        let mut config = Config::from_toml(base()).unwrap();
        config.labels.zone = "z1".into();
        config.cache = Some(Cache {
            trust_root: "/tmp/root.bin".into(),
            voters: vec!["s1=127.0.0.1:1".into()],
        });
        config.tls = Some(Tls {
            ca: "/ca.pem".into(),
            cert: "/cert.pem".into(),
            key: "/key.pem".into(),
        });
        let text = config.to_toml().unwrap();
        let again = Config::from_toml(&text).unwrap();
        assert_eq!(again.to_toml().unwrap(), text);
        assert_eq!(again.labels.zone, "z1");
        assert_eq!(again.cache.unwrap().voters, ["s1=127.0.0.1:1"]);
    }

    // Goal: validate() refuses timing that cannot work, a missing TLS
    // choice, and plaintext on a non-loopback address without the explicit
    // flag, naming the keys. Method: one bad setting at a time.
    #[test]
    fn refuses_bad_combinations() {
        let bad = [
            "[timing]\nheartbeat-ms = 200\nelection-timeout-min-ms = 500\n",
            "[timing]\nelection-timeout-min-ms = 500\nelection-timeout-max-ms = 500\n",
            "[timing]\nlease-ms = 900\n",
        ];
        for extra in bad {
            let config = Config::from_toml(&format!("{}{extra}", base())).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("timing."), "{extra}: {err}");
        }
        let no_tls =
            Config::from_toml("node-id = \"s1\"\ncluster-id = \"c1\"\ndata-dir = \"/x\"\n")
                .unwrap();
        assert!(no_tls.validate().unwrap_err().to_string().contains("[tls]"));
        let open = Config::from_toml(&format!("{}listen = \"0.0.0.0:7001\"\n", base())).unwrap();
        let refused = open.validate().unwrap_err().to_string();
        assert!(
            refused.contains("insecure-plaintext-allow-non-loopback"),
            "{refused}"
        );
        let allowed = Config::from_toml(&format!(
            "{}listen = \"0.0.0.0:7001\"\ninsecure-plaintext-allow-non-loopback = true\n",
            base()
        ))
        .unwrap();
        allowed.validate().unwrap();
        let cache = |voters: &str| {
            Config::from_toml(&format!(
                "{}[cache]\ntrust-root = \"/r\"\nvoters = [{voters}]\n",
                base()
            ))
            .unwrap()
            .validate()
        };
        cache("\"s1=127.0.0.1:7001\"").unwrap();
        for bad in ["", "\"s1\"", "\"s1=nowhere\"", "\"S 1=127.0.0.1:1\""] {
            let err = cache(bad).unwrap_err().to_string();
            assert!(err.contains("cache.voters"), "{bad}: {err}");
        }
        let bad_id = Config::from_toml(&base().replace("s1", "S 1")).unwrap();
        assert!(
            bad_id
                .validate()
                .unwrap_err()
                .to_string()
                .contains("node-id")
        );
    }
}
