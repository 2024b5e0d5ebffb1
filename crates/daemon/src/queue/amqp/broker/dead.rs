//! Dead letters on the broker: listed with `basic.get` (and returned unacknowledged), or
//! republished to their task queue with a fresh attempt count and then acknowledged.

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};

use super::{Broker, broker_err};
use crate::queue::amqp::topology::{self as topo, H_ATTEMPT, H_REASON, H_TASK};
use crate::queue::{DeadLetter, Requeue};
use crate::{Error, Result};

impl Broker {
    /// Reads dead letters with `basic.get` on a temporary channel and closes it unacked, which
    /// returns them to their queue. `select` decides which to republish to the task queue
    /// (attempt 1) and acknowledge.
    async fn scan_dead(
        &mut self,
        tasks: &[String],
        limit: usize,
        select: &dyn Fn(&DeadLetter) -> bool,
    ) -> Result<(Vec<DeadLetter>, u64)> {
        let Some(live) = self.live.as_ref() else {
            return Err(self.not_connected("read dead letters"));
        };
        let channel =
            live.conn.create_channel().await.map_err(|e| broker_err("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker_err("open a channel", e))?;
        let mut listed = Vec::new();
        let mut requeued = 0;
        let result = async {
            for task in tasks {
                let queue = topo::dead_queue(&self.exchange, task);
                // Until the queue is empty: what we hold stays unacknowledged (so it is not
                // read twice) and requeued jobs go to the task queue, not back here.
                loop {
                    if listed.len() >= limit {
                        break;
                    }
                    let got = channel
                        .basic_get(queue.clone().into(), BasicGetOptions { no_ack: false })
                        .await
                        .map_err(|e| broker_err("read dead letters", e))?;
                    let Some(msg) = got else { break };
                    let d = &msg.delivery;
                    let headers = d.properties.headers().as_ref();
                    let letter = DeadLetter {
                        id: d
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        task: topo::header_str(headers, H_TASK).unwrap_or_else(|| task.clone()),
                        routing_key: topo::header_str(headers, topo::H_ROUTING_KEY)
                            .unwrap_or_else(|| d.routing_key.as_str().to_owned()),
                        attempts: topo::header_u32(headers, H_ATTEMPT).unwrap_or(1),
                        reason: topo::header_str(headers, H_REASON)
                            .unwrap_or_else(|| "rejected by the broker (x-death)".to_owned()),
                        payload_len: d.data.len(),
                    };
                    if select(&letter) {
                        let mut fresh = topo::job_headers(1, &letter.routing_key);
                        if let Some(h) = topo::header_str(headers, topo::H_HEADERS) {
                            fresh.insert(topo::H_HEADERS.into(), topo::long_string(&h));
                        }
                        let mut props = BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(letter.id.clone().into())
                            .with_headers(fresh);
                        if let Some(p) = *d.properties.priority() {
                            props = props.with_priority(p);
                        }
                        let mandatory = BasicPublishOptions { mandatory: true, immediate: false };
                        let confirm = channel
                            .basic_publish(
                                "".into(),
                                topo::task_queue(&self.exchange, task).into(),
                                mandatory,
                                &d.data,
                                props,
                            )
                            .await
                            .map_err(|e| broker_err("requeue a dead letter", e))?
                            .await
                            .map_err(|e| broker_err("requeue a dead letter", e))?;
                        if !matches!(confirm, Confirmation::Ack(None)) {
                            return Err(broker_err(
                                "requeue a dead letter",
                                format!("broker answered {confirm:?}"),
                            ));
                        }
                        d.acker
                            .ack(Default::default())
                            .await
                            .map_err(|e| broker_err("requeue a dead letter", e))?;
                        requeued += 1;
                    }
                    listed.push(letter);
                }
            }
            Ok(())
        }
        .await;
        // Unacknowledged ones go back to the dead queue.
        let _ = channel.close(200, "done".into()).await;
        result.map(|()| (listed, requeued))
    }

    pub(super) async fn dead_letters(
        &mut self,
        tasks: &[String],
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        Ok(self.scan_dead(tasks, limit, &|_| false).await?.0)
    }

    /// Republishes the dead letters `which` names (of `tasks`); an id not found among them
    /// is [`Error::NoSuchJob`] (the others named are requeued all the same).
    pub(super) async fn requeue(&mut self, tasks: &[String], which: &Requeue) -> Result<u64> {
        let ids = match which {
            Requeue::All => None,
            Requeue::Ids(ids) if ids.is_empty() => return Ok(0),
            Requeue::Ids(ids) => Some(ids),
        };
        let select = |d: &DeadLetter| ids.is_none_or(|ids| ids.contains(&d.id));
        let (listed, requeued) = self.scan_dead(tasks, usize::MAX, &select).await?;
        let missing = ids.into_iter().flatten().find(|id| !listed.iter().any(|d| &d.id == *id));
        if let Some(missing) = missing {
            return Err(Error::NoSuchJob { id: missing.clone() });
        }
        Ok(requeued)
    }
}
