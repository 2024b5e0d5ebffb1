//! Publishing with publisher confirms, and settling a job's outcome: a copy to a retry
//! queue or to the dead letters (confirmed) before the delivery is acknowledged.

use lapin::options::{BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Acker, BasicProperties, Confirmation};
use procyard_core::Report;

use super::messages::{Ev, JobMeta, Sending};
use super::{Broker, broker_err};
use crate::queue::Outcome;
use crate::queue::amqp::options::delay_ms;
use crate::queue::amqp::topology::{self as topo, H_REASON, H_TASK};
use crate::{Error, Result};

impl Broker {
    pub(super) async fn publish(
        &mut self,
        routing_key: &str,
        payload: &[u8],
        id: &str,
        reply_to: Option<String>,
        sending: &Sending,
    ) -> Result<()> {
        crate::routing::validate_key(routing_key)?;
        if self.live.is_none() {
            return Err(self.not_connected("publish"));
        }
        let mut headers = topo::job_headers(1, routing_key);
        if let Some(h) = &sending.headers_json {
            headers.insert(topo::H_HEADERS.into(), topo::long_string(h));
        }
        let message_id = match &sending.message_id {
            Some(m) => {
                headers.insert(topo::H_JOB_ID.into(), topo::long_string(id));
                m.as_str()
            }
            None => id,
        };
        // The delay is counted after what it goes through is declared, so declaring delays
        // nothing; a delay that shrank onto digits not declared yet declares those too (each
        // round declares at least one queue more, so this ends).
        let delay_ms = loop {
            let ms = delay_ms(sending.not_before, std::time::SystemTime::now())?;
            if ms == 0 || self.ladder_holds(ms) {
                break ms;
            }
            self.declare_ladder(ms).await?;
        };
        let exchange = if delay_ms > 0 {
            topo::add_delay_digits(&mut headers, delay_ms);
            topo::delay_exchange(&self.exchange, topo::DELAY_LEVELS - 1)
        } else {
            self.exchange.clone()
        };
        let Some(live) = self.live.as_ref() else { return Err(self.not_connected("publish")) };
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_content_type("application/octet-stream".into())
            .with_headers(headers);
        if let Some(p) = sending.priority {
            props = props.with_priority(p);
        }
        if let Some(to) = reply_to {
            props = props.with_reply_to(to.into()).with_correlation_id(id.into());
        }
        let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
        let publ = live.publ.clone();
        let sent = publ
            .basic_publish(exchange.into(), routing_key.into(), mandatory, payload, props)
            .await;
        let confirm = match sent {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match confirm {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => {
                Err(Error::Unroutable { routing_key: routing_key.to_owned() })
            }
            Ok(Confirmation::Nack(_)) => Err(Error::PublishRejected {
                routing_key: routing_key.to_owned(),
                reason: "negative publisher confirm".to_owned(),
            }),
            Ok(Confirmation::NotRequested) => Err(Error::PublishRejected {
                routing_key: routing_key.to_owned(),
                reason: "the channel is not in confirm mode".to_owned(),
            }),
            Err(e) => {
                let err = broker_err("publish", e);
                self.check_publ(&err).await;
                Err(err)
            }
        }
    }

    /// After a failed publish: the connection is gone (reconnect) or only the publish channel
    /// (reopen it in confirm mode).
    pub(super) async fn check_publ(&mut self, err: &Error) {
        let Some(live) = self.live.as_mut() else { return };
        if !live.conn.status().connected() {
            self.lost(Report(err).to_string());
            return;
        }
        if !live.publ.status().connected() {
            let reopened = async {
                let c = live.conn.create_channel().await?;
                c.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>(c)
            };
            match reopened.await {
                Ok(c) => live.publ = c,
                Err(e) => self.lost(format!("unable to reopen the publish channel: {e}")),
            }
        }
    }

    pub(super) async fn settle(
        &mut self,
        epoch: u64,
        acker: Acker,
        job: JobMeta,
        outcome: Outcome,
    ) {
        if epoch != self.epoch || self.live.is_none() {
            self.sink.send(Ev::Warning(format!(
                "job {} of task {} finished after its broker connection closed; it was not acknowledged and the broker will deliver it again",
                job.id, job.task
            )));
            return;
        }
        let target = match &outcome {
            Outcome::Done | Outcome::Cancelled { .. } => None,
            Outcome::Retry { delay, .. } => {
                let ms = topo::quantize_delay_ms(delay.as_millis());
                let name = topo::retry_queue(&self.exchange, &job.task, ms);
                if let Err(e) = self.declare_retry_queue(&job.task, &name, ms).await {
                    self.sink.send(Ev::Warning(format!(
                        "job {}: unable to declare retry queue {name}: {}; returning it to its queue",
                        job.id,
                        Report(&e)
                    )));
                    let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                    return;
                }
                let mut headers =
                    topo::job_headers(job.attempt.saturating_add(1), &job.routing_key);
                if let Some(h) = &job.headers_json {
                    headers.insert(topo::H_HEADERS.into(), topo::long_string(h));
                }
                Some((String::new(), name, headers))
            }
            Outcome::DeadLetter { reason } => {
                let mut headers = topo::job_headers(job.attempt, &job.routing_key);
                if let Some(h) = &job.headers_json {
                    headers.insert(topo::H_HEADERS.into(), topo::long_string(h));
                }
                headers.insert(H_REASON.into(), topo::long_string(reason));
                headers.insert(H_TASK.into(), topo::long_string(&job.task));
                Some((topo::dead_exchange(&self.exchange), job.task.clone(), headers))
            }
        };
        let Some(live) = self.live.as_ref() else { return };
        let publ = live.publ.clone();
        let sink = self.sink.clone();
        self.settling.spawn(async move {
            if let Some((exchange, key, headers)) = target {
                let mut props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(job.id.clone().into())
                    .with_headers(headers);
                if let Some(p) = job.priority {
                    props = props.with_priority(p);
                }
                if let Some(to) = &job.reply_to {
                    props = props.with_reply_to(to.clone().into()).with_correlation_id(job.id.clone().into());
                }
                let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
                let confirmed = match publ.basic_publish(exchange.into(), key.clone().into(), mandatory, &job.payload, props).await {
                    Ok(c) => c.await,
                    Err(e) => Err(e),
                };
                if !matches!(confirmed, Ok(Confirmation::Ack(None))) {
                    sink.send(Ev::Warning(format!(
                        "job {} of task {}: the broker did not take its copy for {key} ({confirmed:?}); returning it to its queue",
                        job.id, job.task
                    )));
                    let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                    return;
                }
            }
            match acker.ack(Default::default()).await {
                Ok(true) => {}
                Ok(false) => sink.send(Ev::Warning(format!(
                    "job {} of task {}: not acknowledged, its channel is closed; the broker will deliver it again",
                    job.id, job.task
                ))),
                Err(e) => sink.send(Ev::Warning(format!(
                    "job {} of task {}: acknowledgement failed ({e}); the broker will deliver it again",
                    job.id, job.task
                ))),
            }
        });
    }
}
