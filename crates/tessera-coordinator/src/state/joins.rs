//! The relay of the plan's secure joins (`[[analytics.joins]]`): the
//! coordinator carries opaque, signed envelopes between the sites a join
//! names, bounded in size and count, and audits who sent what kind to whom
//! and how many bytes, never the contents. Each site's report (its consent
//! or refusal, the result) is audited too; once every site of a join has
//! reported the same result, it is recorded in the store as the join's
//! answer (an unprotected release: exact counts and means), and the join's
//! messages are dropped.

use std::collections::BTreeMap;

use tessera_analytics::JoinSpec;
use tessera_proto::pb;

use super::{Federation, Refusal, unavailable};

/// The largest envelope relayed, bytes (the transport carries 16 MiB).
pub const MAX_JOIN_ENVELOPE: usize = 15 << 20;
/// The most messages kept for one site of one join.
pub const MAX_JOIN_MESSAGES: usize = 32;
/// The most bytes kept for every join together.
pub const MAX_JOIN_BYTES: usize = 256 << 20;

/// The kinds a site relays to another.
const RELAYED: &[&str] = &[
    "hello",
    "query",
    "response",
    "decrypt-request",
    "decrypt-share",
    "result",
    "reveal",
    "refuse",
    // [data.cross_silo]'s noisy membership.
    "confirm",
    "offer",
    "reblinded",
    "answers",
];

/// The statuses of a report.
const STATUSES: &[&str] = &["consented", "refused", "failed", "done"];

/// The messages of the joins in progress, by join and recipient.
#[derive(Default)]
pub struct JoinRelay {
    mailboxes: BTreeMap<(String, String), Vec<pb::JoinMessage>>,
    bytes: usize,
    /// Each site's final report of a join.
    reports: BTreeMap<String, BTreeMap<String, pb::JoinReport>>,
    /// Joins whose result is recorded (their messages dropped).
    finished: std::collections::BTreeSet<String>,
}

/// Who may speak in a relayed conversation: a join of the plan, or a pair
/// of the plan's sites computing its `[data.cross_silo]` feature.
struct Conversation {
    name: String,
    sites: Vec<String>,
    /// The most elements a report may count.
    max_elements: u64,
    /// A cross-silo pair: nothing is released to the coordinator, so its
    /// reports are audited and never recorded as an answer.
    cross_silo: bool,
}

impl Federation {
    /// The conversation named `join`: a plan's join, or `cross-silo/I-J`
    /// (`I < J`, indices of the plan's named sites) with `[data.cross_silo]`.
    fn conversation(&self, join: &str) -> Result<Conversation, Refusal> {
        if let Some(pair) = join.strip_prefix("cross-silo/") {
            let sites = self.plan.data.named_sites();
            let parsed = pair
                .split_once('-')
                .and_then(|(i, j)| Some((i.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
                .filter(|&(i, j)| {
                    i < j && j < sites.len() && join == format!("cross-silo/{i}-{j}")
                });
            return match (self.plan.data.cross_silo.is_some(), parsed) {
                (true, Some((i, j))) => Ok(Conversation {
                    name: join.to_string(),
                    sites: vec![sites[i].clone(), sites[j].clone()],
                    max_elements: 0,
                    cross_silo: true,
                }),
                _ => Err(Refusal::Invalid(format!(
                    "'{}': not a pair of the plan's {} sites computing its [data.cross_silo] \
                     feature",
                    tessera_proto::shown(join, 64),
                    sites.len()
                ))),
            };
        }
        let spec = self.join_spec(join)?;
        Ok(Conversation {
            name: spec.name.clone(),
            sites: spec.sites.clone(),
            max_elements: spec.max_elements as u64,
            cross_silo: false,
        })
    }

    fn join_spec(&self, join: &str) -> Result<&JoinSpec, Refusal> {
        self.plan
            .analytics
            .joins
            .iter()
            .find(|j| j.name == join)
            .ok_or_else(|| {
                Refusal::Invalid(format!(
                    "join '{}': the plan lists no such join ([[analytics.joins]])",
                    tessera_proto::shown(join, 64)
                ))
            })
    }

    /// A site posts a join message: relayed to `to`, or its report kept.
    /// `tls`: whether the caller spoke over mutual TLS.
    pub fn join_post(
        &mut self,
        site: &str,
        post: pb::JoinPost,
        tls: bool,
    ) -> Result<pb::JoinPostReply, Refusal> {
        let checked = self.check_join_post(site, &post);
        if let Err(refusal) = &checked {
            self.reject_audit(site, "join", &refusal.to_string());
        }
        checked?;
        self.touch(site);
        let name = post.join.clone();
        if post.kind == "report" {
            let report = post.report.unwrap_or_default();
            return self
                .join_report(site, &name, report)
                .map(|()| pb::JoinPostReply {});
        }
        let size = post.envelope.len();
        let detail = format!(
            "join '{name}': {} to '{}', {size} bytes{}",
            post.kind,
            post.to,
            if tls {
                ""
            } else {
                " (without TLS: unsigned, this coordinator could alter it undetected)"
            }
        );
        if self.joins.finished.contains(&name) {
            // A late message of a finished join: nobody reads it any more.
            self.audit(site, "join", "dropped", &detail);
            return Ok(pb::JoinPostReply {});
        }
        let key = (name, post.to.clone());
        let queue = self.joins.mailboxes.entry(key).or_default();
        if queue.len() >= MAX_JOIN_MESSAGES {
            let reason = format!(
                "join '{}': {} messages to '{}' already wait; at most {MAX_JOIN_MESSAGES}",
                post.join,
                queue.len(),
                post.to
            );
            self.reject_audit(site, "join", &reason);
            return Err(Refusal::Invalid(reason));
        }
        if self.joins.bytes.saturating_add(size) > MAX_JOIN_BYTES {
            let reason = format!(
                "the joins' messages in flight would pass {MAX_JOIN_BYTES} bytes; try again later"
            );
            self.reject_audit(site, "join", &reason);
            return Err(Refusal::Unavailable(reason));
        }
        queue.push(pb::JoinMessage {
            from: site.to_string(),
            kind: post.kind,
            envelope: post.envelope,
        });
        self.joins.bytes += size;
        self.audit(site, "join", "relayed", &detail);
        if !tls {
            tracing::warn!(
                join = %post.join,
                "a join message relayed without TLS: unsigned, this coordinator could alter it undetected"
            );
        }
        Ok(pb::JoinPostReply {})
    }

    fn check_join_post(&self, site: &str, post: &pb::JoinPost) -> Result<(), Refusal> {
        let spec = self.conversation(&post.join)?;
        if !spec.sites.iter().any(|s| s == site) {
            return Err(Refusal::Denied(format!(
                "join '{}' does not name site '{site}' (its sites: {})",
                spec.name,
                spec.sites.join(", ")
            )));
        }
        if post.kind == "report" {
            if !post.to.is_empty() {
                return Err(Refusal::Invalid(
                    "a report goes to the coordinator (empty `to`)".into(),
                ));
            }
            let Some(report) = &post.report else {
                return Err(Refusal::Invalid("a report without its report".into()));
            };
            if !STATUSES.contains(&report.status.as_str()) {
                return Err(Refusal::Invalid(format!(
                    "a join report's status is one of {}, got '{}'",
                    STATUSES.join(", "),
                    tessera_proto::shown(&report.status, 32)
                )));
            }
            if report.reason.len() > tessera_proto::MAX_WITHDRAW_REASON
                || report.sites.len() != report.means.len()
                || report.sites.len() > spec.sites.len()
                || report.sites.iter().any(|s| !spec.sites.contains(s))
                || report.count > spec.max_elements
                || (spec.cross_silo && (report.count != 0 || !report.sites.is_empty()))
            {
                return Err(Refusal::Invalid(format!(
                    "join '{}': a report names sites outside the join, a count above \
                     max_elements {}, or a reason over {} bytes",
                    spec.name,
                    spec.max_elements,
                    tessera_proto::MAX_WITHDRAW_REASON
                )));
            }
            return Ok(());
        }
        if !RELAYED.contains(&post.kind.as_str()) {
            return Err(Refusal::Invalid(format!(
                "a join message's kind is one of {}, got '{}'",
                RELAYED.join(", "),
                tessera_proto::shown(&post.kind, 32)
            )));
        }
        if post.to == site || !spec.sites.contains(&post.to) {
            return Err(Refusal::Invalid(format!(
                "join '{}': '{}' is not another site of the join ({})",
                spec.name,
                tessera_proto::shown(&post.to, tessera_proto::MAX_SITE_NAME),
                spec.sites.join(", ")
            )));
        }
        if post.envelope.len() > MAX_JOIN_ENVELOPE {
            return Err(Refusal::Invalid(format!(
                "a join envelope is at most {MAX_JOIN_ENVELOPE} bytes, got {}",
                post.envelope.len()
            )));
        }
        Ok(())
    }

    fn join_report(
        &mut self,
        site: &str,
        join: &str,
        report: pb::JoinReport,
    ) -> Result<(), Refusal> {
        let what = match report.status.as_str() {
            "done" => {
                let means: Vec<String> = report
                    .sites
                    .iter()
                    .zip(&report.means)
                    .map(|(s, m)| format!("{s} {m}"))
                    .collect();
                format!(
                    "join '{join}': done, {} shared, means {}",
                    report.count,
                    means.join(", ")
                )
            }
            status => format!("join '{join}': {status}: {}", report.reason),
        };
        self.audit(site, "join", &report.status, &what);
        tracing::info!(%site, detail = %what, "join report");
        if self.conversation(join)?.cross_silo {
            return self.cross_silo_report(site, join, &report);
        }
        if report.status != "done" {
            if report.status == "refused" || report.status == "failed" {
                // Its messages stay (bounded) until the other site read the
                // refusal relayed to it.
                self.finish_join(join, site, &report, false)?;
            }
            return Ok(());
        }
        let spec = self.join_spec(join)?;
        let (spec_sites, reveal) = (spec.sites.clone(), spec.reveal);
        let reports = self.joins.reports.entry(join.to_string()).or_default();
        reports.insert(site.to_string(), report);
        if !spec_sites.iter().all(|s| reports.contains_key(s)) {
            return Ok(());
        }
        let first = reports[&spec_sites[0]].clone();
        // With members_first only the first site learns the result (the
        // other reports that it is done, nothing more).
        let agree = reveal == tessera_analytics::JoinReveal::MembersFirst
            || reports.values().all(|r| {
                r.count == first.count
                    && r.sites == first.sites
                    && r.means.len() == first.means.len()
                    && r.means
                        .iter()
                        .zip(&first.means)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
            });
        // A count below min_elements is no release, whatever the sites say
        // (each refuses it before reporting; this is the second line).
        let min = self.join_spec(join)?.min_elements as u64;
        let refusal = if !agree {
            Some("the sites report different results: nothing recorded".to_string())
        } else if first.count < min {
            Some(format!(
                "a count of {} is below min_elements = {min}: nothing recorded",
                first.count
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.audit(
                site,
                "join",
                "disagreed",
                &format!("join '{join}': {reason}"),
            );
            let failed = pb::JoinReport {
                status: "failed".into(),
                reason,
                ..Default::default()
            };
            return self.finish_join(join, site, &failed, true);
        }
        // The first site's result, reported by it.
        let by = spec_sites[0].clone();
        self.finish_join(join, &by, &first, true)
    }

    /// Marks a join finished (its later messages are dropped), records its
    /// result (once, when there is one) and, with `drop`, drops its messages.
    fn finish_join(
        &mut self,
        join: &str,
        site: &str,
        report: &pb::JoinReport,
        drop: bool,
    ) -> Result<(), Refusal> {
        if drop {
            self.drop_join_messages(join);
        }
        if !self.joins.finished.insert(join.to_string()) || report.status != "done" {
            // Only a result is a release; a refusal or failure is audited.
            return Ok(());
        }
        let spec = self.join_spec(join)?.clone();
        let means: serde_json::Map<String, serde_json::Value> = report
            .sites
            .iter()
            .zip(&report.means)
            .map(|(s, m)| {
                let value = serde_json::Number::from_f64(*m)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                (s.clone(), value)
            })
            .collect();
        let answer = serde_json::json!({
            "join": spec.name,
            "sites": spec.sites,
            "identifier": spec.identifier,
            "value": spec.value,
            "reveal": spec.reveal.as_str(),
            "status": report.status,
            "reason": report.reason,
            "reported_by": site,
            "count": report.count,
            "means": means,
        });
        let what = match spec.reveal {
            tessera_analytics::JoinReveal::CountMean => {
                format!(
                    "count and mean of {} over the shared identifiers",
                    spec.value
                )
            }
            tessera_analytics::JoinReveal::Members => {
                "which identifiers are shared, at each site (PSI)".to_string()
            }
            tessera_analytics::JoinReveal::MembersFirst => format!(
                "which identifiers are shared, at {} only (PSI)",
                spec.sites.first().map_or("", String::as_str)
            ),
            tessera_analytics::JoinReveal::Count => {
                "the number of shared identifiers (PSI-cardinality)".to_string()
            }
        };
        let query = format!(
            "JOIN {} ON {} ({}): {what}",
            spec.name,
            spec.identifier,
            spec.sites.join(", "),
        );
        self.store
            .put_join_result(
                &self.run.id,
                &query,
                &answer.to_string(),
                self.clock.unix_micros(),
            )
            .map_err(unavailable)
    }

    /// A report of a cross-silo pair: audited; once both sites are done
    /// (or one failed or refused, after its refusal was relayed), the
    /// pair's messages are dropped. Nothing of it is an answer here.
    fn cross_silo_report(
        &mut self,
        site: &str,
        join: &str,
        report: &pb::JoinReport,
    ) -> Result<(), Refusal> {
        if report.status == "failed" || report.status == "refused" {
            self.joins.finished.insert(join.to_string());
            return Ok(());
        }
        if report.status != "done" {
            return Ok(());
        }
        let sites = self.conversation(join)?.sites;
        let reports = self.joins.reports.entry(join.to_string()).or_default();
        reports.insert(site.to_string(), report.clone());
        if sites.iter().all(|s| reports.contains_key(s)) {
            self.joins.finished.insert(join.to_string());
            self.drop_join_messages(join);
        }
        Ok(())
    }

    /// Drops a join's messages.
    fn drop_join_messages(&mut self, join: &str) {
        let dropped: Vec<(String, String)> = self
            .joins
            .mailboxes
            .keys()
            .filter(|(j, _)| j == join)
            .cloned()
            .collect();
        for key in dropped {
            if let Some(queue) = self.joins.mailboxes.remove(&key) {
                let size: usize = queue.iter().map(|m| m.envelope.len()).sum();
                self.joins.bytes = self.joins.bytes.saturating_sub(size);
            }
        }
    }

    /// The messages to `site` in a join from index `next` on (as many as
    /// fit one reply: at least one, then while under the envelope bound).
    pub fn join_poll(
        &mut self,
        site: &str,
        request: &pb::JoinPollRequest,
        tls: bool,
    ) -> Result<pb::JoinPollReply, Refusal> {
        let checked = self.conversation(&request.join).and_then(|spec| {
            if spec.sites.iter().any(|s| s == site) {
                Ok(())
            } else {
                Err(Refusal::Denied(format!(
                    "join '{}' does not name site '{site}'",
                    spec.name
                )))
            }
        });
        if let Err(refusal) = &checked {
            self.reject_audit(site, "join", &refusal.to_string());
        }
        checked?;
        self.touch(site);
        let messages = self
            .joins
            .mailboxes
            .get(&(request.join.clone(), site.to_string()))
            .map(|queue| {
                let mut out: Vec<pb::JoinMessage> = Vec::new();
                let mut bytes = 0usize;
                for m in queue.iter().skip(request.next as usize) {
                    if !out.is_empty() && bytes + m.envelope.len() > MAX_JOIN_ENVELOPE {
                        break;
                    }
                    bytes += m.envelope.len();
                    out.push(m.clone());
                }
                out
            })
            .unwrap_or_default();
        Ok(pb::JoinPollReply {
            messages,
            insecure: !tls,
        })
    }
}
