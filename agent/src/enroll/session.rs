//! The join itself: the pinned TLS channel, submitting and polling the
//! request, and storing what an approval returns.

use super::*;

/// A TLS channel to the control plane at `server`, with server name
/// `<cluster>.cluster.rap` and the CA pinned by `fingerprint`. The
/// handshake runs here, so nothing is sent to a server that fails the pin.
/// Returns the channel, the verifier (which keeps checking reconnects)
/// and the pinned CA certificate.
pub async fn connect(
    server: &str,
    cluster: &ClusterId,
    fingerprint: CaFingerprint,
) -> Result<(Channel, Arc<PinnedCaVerifier>, CertificateDer<'static>), EnrollError> {
    rap_core::tls::install_crypto_provider();
    let verifier = Arc::new(PinnedCaVerifier::new(fingerprint));
    let tls = ClientTlsConfig::new()
        .domain_name(cluster_server_name(cluster))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    let connect_error = |reason: String| EnrollError::Connect {
        server: server.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("https://{server}"))
        .map_err(|e| connect_error(error_chain(&e)))?
        .tls_config_with_verifier(tls, Arc::clone(&verifier) as _)
        .map_err(|e| connect_error(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    let connected = endpoint.connect().await;
    match (connected, verifier.outcome()) {
        (_, PinOutcome::Refused(reason)) => Err(EnrollError::Pinning {
            server: server.to_string(),
            reason,
        }),
        (Ok(channel), PinOutcome::Pinned(ca)) => Ok((channel, verifier, ca)),
        (Ok(_), PinOutcome::NotYet) => Err(connect_error(
            "the TLS handshake finished without checking the server certificate".into(),
        )),
        (Err(e), _) => Err(connect_error(error_chain(&e))),
    }
}

/// An error with its sources, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn rpc_error(call: &'static str, status: &tonic::Status) -> EnrollError {
    EnrollError::Rpc {
        call,
        code: status_code(status),
        message: shorten_message(status.message()),
    }
}

/// The stable error code a status carries (`rap.v1.ErrorDetail`), or its
/// gRPC code.
pub(crate) fn status_code(status: &tonic::Status) -> String {
    rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("{:?}", status.code()))
}

pub(crate) fn shorten_message(message: &str) -> String {
    const MESSAGE_CHARS_MAX: usize = 500;
    let mut shown: String = message.chars().take(MESSAGE_CHARS_MAX).collect();
    if message.chars().count() > MESSAGE_CHARS_MAX {
        shown.push('…');
    }
    shown
}

/// Whether a failed poll is worth repeating (the control plane restarting,
/// a timeout, overload).
pub(crate) fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

/// Runs the whole join (see the module docs), reporting progress to
/// `on_event`. When `interrupt` completes (e.g. on Ctrl-C), the join stops
/// at the next safe point with [`JoinOutcome::Interrupted`]: while
/// connecting or polling, but never between submitting a request and
/// saving its id (a lost id would leave a pending request that this node
/// cannot poll).
pub async fn join(
    options: &JoinOptions,
    on_event: &mut (dyn FnMut(Event) + Send),
    interrupt: impl Future<Output = ()> + Send,
) -> Result<JoinOutcome, EnrollError> {
    let mut interrupt = std::pin::pin!(interrupt);
    check_token(&options.token)?;
    let state = ClusterState::open(&options.state_dir, &options.cluster)?;
    if let Some(identity) = state.identity()? {
        return Ok(JoinOutcome::AlreadyEnrolled {
            identity,
            dir: state.dir().to_path_buf(),
        });
    }
    let (key, created) = state.load_or_create_key()?;
    let key_path = state.path(crate::state::NODE_KEY_FILE);
    on_event(if created {
        Event::KeyCreated(key_path)
    } else {
        Event::KeyReused(key_path)
    });
    let pending = saved_request(&state, options, &key)?;

    let (channel, verifier, ca) = tokio::select! {
        connected = connect(&options.server, &options.cluster, options.ca_fingerprint) => connected?,
        () = interrupt.as_mut() => {
            return Ok(JoinOutcome::Interrupted { join_request_id: None });
        }
    };
    on_event(Event::Pinned {
        server: options.server.clone(),
    });
    let mut session = Session {
        options,
        state,
        key,
        client: EnrollmentServiceClient::new(channel),
        verifier,
        ca,
    };
    let join_request_id = match pending {
        Some(p) => {
            on_event(Event::Resumed {
                join_request_id: p.join_request_id.clone(),
            });
            p.join_request_id
        }
        None => {
            let id = session.submit().await?;
            on_event(Event::Submitted {
                join_request_id: id.clone(),
            });
            id
        }
    };
    session
        .poll(join_request_id, on_event, interrupt.as_mut())
        .await
}

/// The saved join request, when it belongs to this cluster and key.
fn saved_request(
    state: &ClusterState,
    options: &JoinOptions,
    key: &SigningKey,
) -> Result<Option<PendingJoin>, EnrollError> {
    let Some(pending) = state.pending()? else {
        return Ok(None);
    };
    let path = state.path(crate::state::JOIN_REQUEST_FILE);
    if pending.cluster_id != options.cluster.as_str() {
        return Err(EnrollError::StalePending {
            path,
            reason: format!("it is for cluster {:?}", shorten(&pending.cluster_id)),
        });
    }
    if pending.key_fingerprint != key_fingerprint(key) {
        return Err(EnrollError::StalePending {
            path,
            reason: "it was signed by another node key".into(),
        });
    }
    Ok(Some(pending))
}

/// A join after the pin held.
struct Session<'a> {
    options: &'a JoinOptions,
    state: ClusterState,
    key: SigningKey,
    client: EnrollmentServiceClient<Channel>,
    verifier: Arc<PinnedCaVerifier>,
    ca: CertificateDer<'static>,
}

impl Session<'_> {
    /// Submits a new join request with the token and saves its id.
    async fn submit(&mut self) -> Result<String, EnrollError> {
        let options = self.options;
        let (timestamp_unix_ms, nonce, proof) = prove(&self.key, PURPOSE_JOIN, &options.cluster)?;
        let request = pb::SubmitJoinRequestRequest {
            token: options.token.clone(),
            cluster_id: options.cluster.to_string(),
            node_public_key: self.key.verifying_key().to_bytes().to_vec(),
            facts: Some(options.facts.clone()),
            capabilities: options.capabilities.clone(),
            requested_roles: options.roles.iter().map(ToString::to_string).collect(),
            timestamp_unix_ms,
            nonce,
            proof,
            kind: pb::NodeKind::Agent as i32,
            node_id: String::new(),
            server_names: Vec::new(),
        };
        let answer = match self.client.submit_join_request(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) => return Err(self.pin_or(rpc_error("SubmitJoinRequest", &status))),
        };
        rap_proto::ids::JoinRequestId::new(answer.join_request_id.as_str())
            .map_err(|e| EnrollError::BadIdentity(format!("join request id: {e}")))?;
        self.state.save_pending(&PendingJoin {
            join_request_id: answer.join_request_id.clone(),
            cluster_id: options.cluster.to_string(),
            server: options.server.clone(),
            key_fingerprint: key_fingerprint(&self.key),
            submitted_at_unix_ms: UnixMillis::now().0,
        })?;
        Ok(answer.join_request_id)
    }

    /// Polls every poll interval until the request is decided or the wait
    /// is over. Transient failures are reported and polled through.
    async fn poll<F: Future<Output = ()>>(
        &mut self,
        join_request_id: String,
        on_event: &mut (dyn FnMut(Event) + Send),
        mut interrupt: std::pin::Pin<&mut F>,
    ) -> Result<JoinOutcome, EnrollError> {
        let interrupted = |join_request_id: String| {
            Ok(JoinOutcome::Interrupted {
                join_request_id: Some(join_request_id),
            })
        };
        let deadline = self.options.wait.map(|w| tokio::time::Instant::now() + w);
        let mut announced = false;
        loop {
            let answer = tokio::select! {
                answer = self.status(&join_request_id) => answer,
                () = interrupt.as_mut() => return interrupted(join_request_id),
            };
            match answer {
                Ok(answer) => {
                    if let Some(outcome) = self.decide(&join_request_id, answer)? {
                        return Ok(outcome);
                    }
                    if !announced {
                        announced = true;
                        on_event(Event::WaitingForApproval {
                            join_request_id: join_request_id.clone(),
                        });
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    return Err(EnrollError::UnknownRequest {
                        join_request_id,
                        path: self.state.path(crate::state::JOIN_REQUEST_FILE),
                    });
                }
                Err(status) if is_transient(&status) => {
                    let error = self.pin_or(rpc_error("GetJoinStatus", &status));
                    if matches!(error, EnrollError::Pinning { .. }) {
                        return Err(error);
                    }
                    on_event(Event::Retrying {
                        error: error.to_string(),
                    });
                }
                Err(status) => return Err(rpc_error("GetJoinStatus", &status)),
            }
            let mut pause = self.options.poll_interval;
            if let Some(deadline) = deadline {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(JoinOutcome::StillPending { join_request_id });
                }
                pause = pause.min(deadline - now);
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = interrupt.as_mut() => return interrupted(join_request_id),
            }
        }
    }

    /// One status poll with a fresh proof.
    async fn status(
        &mut self,
        join_request_id: &str,
    ) -> Result<pb::GetJoinStatusResponse, tonic::Status> {
        let cluster = &self.options.cluster;
        let (timestamp_unix_ms, nonce, proof) = prove(&self.key, PURPOSE_STATUS, cluster)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let request = pb::GetJoinStatusRequest {
            join_request_id: join_request_id.to_string(),
            cluster_id: cluster.to_string(),
            node_public_key: self.key.verifying_key().to_bytes().to_vec(),
            timestamp_unix_ms,
            nonce,
            proof,
        };
        self.client
            .get_join_status(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The outcome of a decided request (storing an approval); `None`
    /// while pending.
    fn decide(
        &self,
        join_request_id: &str,
        answer: pb::GetJoinStatusResponse,
    ) -> Result<Option<JoinOutcome>, EnrollError> {
        let join_request_id = join_request_id.to_string();
        let outcome = match pb::JoinRequestStatus::try_from(answer.status)
            .unwrap_or(pb::JoinRequestStatus::Unspecified)
        {
            pb::JoinRequestStatus::Pending => return Ok(None),
            pb::JoinRequestStatus::Approved => JoinOutcome::Approved(store_identity(
                self.options,
                &self.state,
                &self.key,
                &self.ca,
                answer,
            )?),
            pb::JoinRequestStatus::Rejected => JoinOutcome::Rejected {
                join_request_id,
                reason: shorten_message(&answer.reason),
            },
            pb::JoinRequestStatus::Expired => JoinOutcome::Expired { join_request_id },
            pb::JoinRequestStatus::Unspecified => {
                return Err(EnrollError::BadIdentity(format!(
                    "unknown join request status {}",
                    answer.status
                )));
            }
        };
        // Decided: a later `join` must not poll this request again.
        self.state.clear_pending()?;
        Ok(Some(outcome))
    }

    /// A pinning refusal seen by the verifier wins over the RPC error it
    /// caused.
    fn pin_or(&self, error: EnrollError) -> EnrollError {
        match self.verifier.outcome() {
            PinOutcome::Refused(reason) => EnrollError::Pinning {
                server: self.options.server.clone(),
                reason,
            },
            _ => error,
        }
    }
}

/// Checks an approval against this node and the pinned CA, then stores it:
/// node.pem, ca.pem, trust-root.bin, storage-endpoints.json,
/// capabilities.json, and last
/// identity.json (whose presence means "enrolled").
fn store_identity(
    options: &JoinOptions,
    state: &ClusterState,
    key: &SigningKey,
    ca: &CertificateDer<'static>,
    answer: pb::GetJoinStatusResponse,
) -> Result<Enrolled, EnrollError> {
    let bad = |reason: String| EnrollError::BadIdentity(reason);
    let identity = answer
        .identity
        .ok_or_else(|| bad("approved without an identity".into()))?;
    if identity.cluster_id != options.cluster.as_str() {
        return Err(bad(format!(
            "identity for cluster {:?}, not {}",
            shorten(&identity.cluster_id),
            options.cluster
        )));
    }
    let node_id = NodeId::new(identity.node_id.as_str()).map_err(|e| bad(e.to_string()))?;
    let leaf = check_issued_chain(
        &identity.certificate_chain_pem,
        ca,
        &PeerIdentity::node(options.cluster.clone(), node_id.clone())
            .map_err(|e| bad(e.to_string()))?,
        key.verifying_key().as_bytes(),
    )
    .map_err(bad)?;
    let trust_root = answer
        .trust_root
        .ok_or_else(|| bad("approved without a trust root".into()))?;
    let trust_generation = check_trust_root(&trust_root, &options.cluster)?;
    if answer.bootstrap_endpoints.len() > STORAGE_ENDPOINTS_MAX {
        return Err(bad(format!(
            "{} storage endpoints; at most {STORAGE_ENDPOINTS_MAX}",
            answer.bootstrap_endpoints.len()
        )));
    }
    let endpoints: Vec<StorageEndpointRecord> = answer
        .bootstrap_endpoints
        .into_iter()
        .map(|e| {
            let domain = e.domain.unwrap_or_default();
            StorageEndpointRecord {
                node_id: e.node_id,
                address: e.address,
                region: domain.region,
                zone: domain.zone,
                host: domain.host,
            }
        })
        .collect();

    let mut chain_pem = pem_certificate(leaf.as_ref());
    chain_pem.push_str(&pem_certificate(ca.as_ref()));
    state.write(NODE_CERT_FILE, chain_pem.as_bytes())?;
    state.write(CA_CERT_FILE, pem_certificate(ca.as_ref()).as_bytes())?;
    state.write(TRUST_ROOT_FILE, &trust_root.encode_to_vec())?;
    state.write_json(STORAGE_ENDPOINTS_FILE, &endpoints)?;
    let capabilities: Vec<CapabilityRecord> = options
        .capabilities
        .iter()
        .map(|c| CapabilityRecord {
            name: c.name.clone(),
            detail: c.detail.clone(),
        })
        .collect();
    state.write_json(CAPABILITIES_FILE, &capabilities)?;
    let record = IdentityRecord {
        node_id: node_id.to_string(),
        cluster_id: options.cluster.to_string(),
        not_after_unix_ms: identity.not_after_unix_ms,
        server: options.server.clone(),
        ca_fingerprint: options.ca_fingerprint.to_hex(),
        key_fingerprint: key_fingerprint(key),
    };
    state.write_json(crate::state::IDENTITY_FILE, &record)?;
    Ok(Enrolled {
        identity: record,
        dir: state.dir().to_path_buf(),
        trust_generation,
        storage_endpoints: endpoints.len(),
    })
}

/// Checks the trust root's shape and cluster; a genesis root (the first
/// generation) must verify with its own keys. A later generation cannot
/// be checked without its predecessors and is taken on the pinned
/// channel's authority. Returns the generation.
fn check_trust_root(root: &pb::SignedTrustRoot, cluster: &ClusterId) -> Result<u64, EnrollError> {
    let bad = |reason: String| EnrollError::BadIdentity(reason);
    let bytes = root.encode_to_vec();
    if bytes.len() > rap_proto::limits::TRUST_ROOT_BYTES_MAX {
        return Err(bad(format!(
            "trust root of {} bytes; at most {}",
            bytes.len(),
            rap_proto::limits::TRUST_ROOT_BYTES_MAX
        )));
    }
    let inner =
        pb::TrustRoot::decode(root.root.as_slice()).map_err(|e| bad(format!("trust root: {e}")))?;
    if inner.cluster_id != cluster.as_str() {
        return Err(bad(format!(
            "trust root of cluster {:?}, not {cluster}",
            shorten(&inner.cluster_id)
        )));
    }
    if inner.generation == 1 {
        rap_proto::envelope::VerifiedTrustRoot::verify_genesis(&bytes, cluster, None)
            .map_err(|e| bad(format!("trust root: {e}")))?;
    }
    Ok(inner.generation)
}
