use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use switchyard_model::dataplane::{Dump, Error, SyncReport};
use switchyard_model::manifest;
use switchyard_model::store::{Kind, Object};
use switchyard_model::{PlanOptions, Scheduler, ServicePlan};

use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Restore,
    /// A sync: `None` for a full one, else the changed Service names.
    Sync(Option<Vec<String>>),
}

#[derive(Debug, Clone, Default)]
struct FakeDataplane {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_next_syncs: Arc<Mutex<usize>>,
}

impl Dataplane for FakeDataplane {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn supports(&self, _: Scheduler) -> bool {
        true
    }
    fn restore(&mut self) -> Result<(), Error> {
        self.calls.lock().unwrap().push(Call::Restore);
        Ok(())
    }
    fn sync(
        &mut self,
        _: &switchyard_model::NodePlan,
        _: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
    ) -> Result<SyncReport, Error> {
        let names = changed.map(|c| c.iter().map(|k| k.0.name.clone()).collect());
        self.calls.lock().unwrap().push(Call::Sync(names));
        let mut fail = self.fail_next_syncs.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(Error::Rejected { dataplane: "fake", message: "injected".into() });
        }
        Ok(SyncReport::default())
    }
    fn dump(&self) -> Result<Dump, Error> {
        Ok(Dump::default())
    }
    fn cleanup(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

fn service(name: &str, ip: &str) -> Object {
    let yaml = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n");
    manifest::parse(&yaml).0.remove(0)
}

async fn wait_for(calls: &Arc<Mutex<Vec<Call>>>, n: usize) -> Vec<Call> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let c = calls.lock().unwrap().clone();
            if c.len() >= n {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {n} dataplane calls, got {:?}", calls.lock().unwrap()))
}

fn start(min_sync_period: Duration) -> (FakeDataplane, tokio::sync::mpsc::Sender<Event>, Health) {
    let fake = FakeDataplane::default();
    let health = Health::new(Duration::from_secs(60));
    let lp = SyncLoop::new(
        Store::new(PlanOptions::new("n")),
        Box::new(fake.clone()),
        Metrics::new(),
        health.clone(),
        min_sync_period,
        Box::new(Vec::new),
        Box::new(|_| Ok(0)),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(lp.run(rx));
    (fake, tx, health)
}

/// Nothing is programmed before the initial lists are complete; then a restore and a full sync; later
/// changes arriving together are batched into one incremental sync naming exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_initial_lists_then_batches() {
    let (fake, tx, health) = start(Duration::from_millis(300));
    tx.send(Event::Replace(Kind::Service, vec![service("a", "10.96.0.1")])).await.unwrap();
    tx.send(Event::Replace(Kind::EndpointSlice, vec![])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fake.calls.lock().unwrap().is_empty(), "no sync before Synced");
    assert!(!health.report(true).healthy, "not ready before the first sync");

    tx.send(Event::Synced).await.unwrap();
    assert_eq!(wait_for(&fake.calls, 2).await, [Call::Restore, Call::Sync(None)]);
    assert!(health.report(true).healthy);

    for (n, ip) in [("b", "10.96.0.2"), ("c", "10.96.0.3"), ("d", "10.96.0.4")] {
        tx.send(Event::Apply(service(n, ip))).await.unwrap();
    }
    let calls = wait_for(&fake.calls, 3).await;
    assert_eq!(calls[2], Call::Sync(Some(vec!["b".into(), "c".into(), "d".into()])));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fake.calls.lock().unwrap().len(), 3, "one sync for the batch");
}

/// A failed sync is retried after a fresh restore, as a full sync, and health stays unhealthy-pending until
/// it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_restores_and_retries() {
    let (fake, tx, health) = start(Duration::from_millis(10));
    *fake.fail_next_syncs.lock().unwrap() = 1;
    tx.send(Event::Replace(Kind::Service, vec![service("a", "10.96.0.1")])).await.unwrap();
    tx.send(Event::Synced).await.unwrap();
    let calls = wait_for(&fake.calls, 4).await;
    assert_eq!(calls, [Call::Restore, Call::Sync(None), Call::Restore, Call::Sync(None)]);
    assert!(health.report(true).synced);
}
