//! Declaring the topology (see [`topology`](crate::queue::amqp::topology)): the exchanges,
//! each task's queue, dead queue and bindings, retry queues on first use, and unbinding what a
//! reload removed.

use lapin::ExchangeKind;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use procyard_core::Report;

use super::{Broker, broker_err};
use crate::Result;
use crate::queue::amqp::topology as topo;
use crate::queue::{OpenMode, TaskBinding};

impl Broker {
    pub(super) async fn bind(&mut self, tasks: Vec<TaskBinding>) -> Result<()> {
        for t in &tasks {
            for key in &t.routing_keys {
                crate::routing::validate_pattern(key)?;
            }
        }
        let removed: Vec<String> = self
            .tasks
            .keys()
            .filter(|name| !tasks.iter().any(|t| &t.name == *name))
            .cloned()
            .collect();
        self.tasks = tasks.iter().map(|t| (t.name.clone(), t.clone())).collect();
        if self.live.is_none() {
            return match self.mode {
                // Declared when the connection comes back.
                OpenMode::Daemon => Ok(()),
                OpenMode::Client => Err(self.not_connected("declare the topology")),
            };
        }
        for name in removed {
            // Its queue and jobs stay; this process stops consuming and unbinds what it bound.
            self.capacity.insert(name.clone(), 0);
            self.apply_capacity(&name)
                .await
                .map_err(|e| broker_err("stop consuming a removed task", e))?;
            self.capacity.remove(&name);
            let keys = self.bound.remove(&name).unwrap_or_default();
            let ctl = self.ctl().await?;
            for key in keys {
                ctl.queue_unbind(
                    topo::task_queue(&self.exchange, &name).into(),
                    self.exchange.clone().into(),
                    key.into(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err("unbind a removed task", e))?;
            }
        }
        let result = self.declare_all(&tasks).await;
        if let Err(e) = &result
            && self.live.as_ref().is_some_and(|l| !l.conn.status().connected())
        {
            self.lost(Report(e).to_string());
        }
        result
    }

    pub(super) async fn declare_all(&mut self, tasks: &[TaskBinding]) -> Result<()> {
        let ctl = self.ctl().await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ctl.exchange_declare(
            self.exchange.clone().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_err("declare the jobs exchange", e))?;
        let dead_exchange = topo::dead_exchange(&self.exchange);
        ctl.exchange_declare(
            dead_exchange.clone().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_err("declare the dead-letter exchange", e))?;
        ctl.exchange_declare(
            topo::events_exchange(&self.exchange).into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_err("declare the events exchange", e))?;
        for task in tasks {
            let queue = topo::task_queue(&self.exchange, &task.name);
            let priorities = self.priorities;
            self.declare_durable_queue(&queue, priorities, Some((&dead_exchange, &task.name)))
                .await?;
            let dead = topo::dead_queue(&self.exchange, &task.name);
            self.declare_durable_queue(&dead, false, None).await?;
            let ctl = self.ctl().await?;
            ctl.queue_bind(
                dead.into(),
                dead_exchange.clone().into(),
                task.name.clone().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_err("bind the dead queue", e))?;
            let previous = self.bound.remove(&task.name).unwrap_or_default();
            for key in &task.routing_keys {
                ctl.queue_bind(
                    queue.clone().into(),
                    self.exchange.clone().into(),
                    key.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err("bind a task queue", e))?;
            }
            for key in previous.iter().filter(|k| !task.routing_keys.contains(k)) {
                ctl.queue_unbind(
                    queue.clone().into(),
                    self.exchange.clone().into(),
                    key.clone().into(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err("unbind a routing key", e))?;
            }
            self.bound.insert(task.name.clone(), task.routing_keys.iter().cloned().collect());
        }
        Ok(())
    }

    /// Declares a durable queue: quorum where the broker supports it (unless classic queues
    /// were asked for), else classic. A queue
    /// that already exists with other arguments (declared classic by an older broker or by
    /// hand) is refused by the broker; it is then used as it is, after a passive check.
    async fn declare_durable_queue(
        &mut self,
        name: &str,
        priorities: bool,
        dead_letter: Option<(&str, &str)>,
    ) -> Result<()> {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let kinds: &[bool] = if self.quorum == Some(false) { &[false] } else { &[true, false] };
        let mut refusal = None;
        for &quorum in kinds {
            let ctl = self.ctl().await?;
            let args = topo::durable_queue_args(quorum, priorities, dead_letter);
            match ctl.queue_declare(name.into(), durable, args).await {
                Ok(_) => {
                    if !quorum && refusal.is_some() && self.quorum.is_none() {
                        tracing::info!(
                            "amqp: the broker refused a quorum queue; using classic queues"
                        );
                        self.quorum = Some(false);
                    }
                    return Ok(());
                }
                Err(e) => {
                    if self.live.as_ref().is_some_and(|l| !l.conn.status().connected()) {
                        return Err(broker_err("declare a queue", e));
                    }
                    refusal = Some(e);
                }
            }
        }
        let ctl = self.ctl().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ctl.queue_declare(name.into(), passive, FieldTable::default()).await {
            Ok(_) => {
                if let Some(e) = refusal {
                    if priorities {
                        tracing::warn!(
                            "amqp: queue {name} exists without x-max-priority ({e}); using it as it is: its jobs run in arrival order, not by priority, until it is deleted and declared again"
                        );
                    } else {
                        tracing::info!(
                            "amqp: queue {name} exists with other arguments ({e}); using it as it is"
                        );
                    }
                }
                Ok(())
            }
            Err(e) => Err(broker_err("declare a queue", refusal.unwrap_or(e))),
        }
    }

    /// Whether the ladder and the queues of `delay_ms`'s digits are declared on this
    /// connection.
    pub(super) fn ladder_holds(&self, delay_ms: u64) -> bool {
        let Some(live) = self.live.as_ref() else { return false };
        live.ladder_declared
            && (0..topo::DELAY_LEVELS)
                .zip(topo::delay_digits(delay_ms))
                .all(|(level, digit)| digit == 0 || live.delay_declared.contains(&(level, digit)))
    }

    /// Declares what a message delayed `delay_ms` goes through, each object once per
    /// connection: the ladder's headers exchanges, each bound one level down for digit 0 (once),
    /// and for each nonzero digit of the delay its level's TTL queue, bound for that digit. A
    /// message published to the top level with its delay's digits in its headers passes
    /// through exactly those queues, then reaches the jobs exchange with its routing key
    /// unchanged.
    pub(super) async fn declare_ladder(&mut self, delay_ms: u64) -> Result<()> {
        if self.ladder_holds(delay_ms) {
            return Ok(());
        }
        let ctl = self.ctl().await?;
        let err = |e| broker_err("declare the delay queues", e);
        if !self.live.as_ref().is_some_and(|l| l.ladder_declared) {
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            for level in 0..topo::DELAY_LEVELS {
                let exchange = topo::delay_exchange(&self.exchange, level);
                ctl.exchange_declare(
                    exchange.clone().into(),
                    ExchangeKind::Headers,
                    durable,
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
                ctl.exchange_bind(
                    topo::below(&self.exchange, level).into(),
                    exchange.into(),
                    "".into(),
                    ExchangeBindOptions::default(),
                    topo::delay_binding(level, 0),
                )
                .await
                .map_err(err)?;
            }
            if let Some(live) = self.live.as_mut() {
                live.ladder_declared = true;
            }
        }
        let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
        for (level, digit) in (0..topo::DELAY_LEVELS).zip(topo::delay_digits(delay_ms)) {
            let known =
                self.live.as_ref().is_some_and(|l| l.delay_declared.contains(&(level, digit)));
            if digit == 0 || known {
                continue;
            }
            let queue = topo::delay_queue(&self.exchange, level, digit);
            ctl.queue_declare(
                queue.clone().into(),
                queue_opts,
                topo::delay_queue_args(&self.exchange, level, digit),
            )
            .await
            .map_err(err)?;
            ctl.queue_bind(
                queue.into(),
                topo::delay_exchange(&self.exchange, level).into(),
                "".into(),
                QueueBindOptions::default(),
                topo::delay_binding(level, digit),
            )
            .await
            .map_err(err)?;
            if let Some(live) = self.live.as_mut() {
                live.delay_declared.insert((level, digit));
            }
        }
        Ok(())
    }

    pub(super) async fn declare_retry_queue(
        &mut self,
        task: &str,
        name: &str,
        ms: u64,
    ) -> Result<()> {
        if self.live.as_ref().is_some_and(|l| l.retry_declared.contains(name)) {
            return Ok(());
        }
        let ctl = self.ctl().await?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let task_queue = topo::task_queue(&self.exchange, task);
        ctl.queue_declare(name.into(), durable, topo::retry_queue_args(&task_queue, ms))
            .await
            .map_err(|e| broker_err("declare a retry queue", e))?;
        if let Some(live) = self.live.as_mut() {
            live.retry_declared.insert(name.to_owned());
        }
        self.retry_queues.entry(task.to_owned()).or_default().insert(name.to_owned());
        Ok(())
    }
}
