//! Queue depths as the broker sees them: passive declares of each task's queue, dead queue
//! and retry queues.

use std::collections::BTreeMap;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use procyard_core::Report;

use super::messages::BrokerDepth;
use super::{Broker, broker_err};
use crate::Result;
use crate::queue::amqp::topology as topo;

impl Broker {
    /// Message count of a queue by passive declare; `None` if it does not exist.
    async fn count(&mut self, queue: &str) -> Result<Option<u64>> {
        let ctl = self.ctl().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ctl.queue_declare(queue.into(), passive, FieldTable::default()).await {
            Ok(q) => Ok(Some(u64::from(q.message_count()))),
            Err(e) => {
                if self.live.as_ref().is_some_and(|l| !l.conn.status().connected()) {
                    let err = broker_err("read queue depths", e);
                    self.lost(Report(&err).to_string());
                    return Err(err);
                }
                Ok(None)
            }
        }
    }

    pub(super) async fn depths(
        &mut self,
        tasks: &[String],
    ) -> Result<BTreeMap<String, BrokerDepth>> {
        if self.live.is_none() {
            return Err(self.not_connected("read queue depths"));
        }
        let mut out = BTreeMap::new();
        for task in tasks {
            let mut depth = BrokerDepth {
                ready: self.count(&topo::task_queue(&self.exchange, task)).await?.unwrap_or(0),
                dead: self.count(&topo::dead_queue(&self.exchange, task)).await?.unwrap_or(0),
                delayed: 0,
            };
            let retry: Vec<String> =
                self.retry_queues.get(task).into_iter().flatten().cloned().collect();
            for q in retry {
                depth.delayed += self.count(&q).await?.unwrap_or(0);
            }
            out.insert(task.clone(), depth);
        }
        Ok(out)
    }
}
