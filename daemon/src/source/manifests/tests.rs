use std::collections::BTreeSet;

use super::*;
use switchyard_model::store::Kind;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sy-manifests-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";

/// Multi-document files: known kinds parsed (namespace defaulted), other kinds and bad documents skipped.
#[test]
fn parses_documents() {
    let text = format!(
        "{SVC}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: prod\naddressType: IPv4\nendpoints: []\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports: 7\n"
    );
    let objs = parse_file(Path::new("x.yaml"), &text);
    assert_eq!(objs.len(), 2, "{objs:?}");
    assert_eq!(objs[0].key().namespace, "default");
    assert_eq!(objs[1].key().namespace, "prod");
}

/// First scan: every object applied, file by file, then Synced; later scans: only what changed, deletes for
/// what left.
#[tokio::test]
async fn scan_reports_changes() {
    let dir = tmpdir("scan");
    std::fs::write(dir.join("a.yaml"), SVC).unwrap();
    std::fs::write(dir.join("b.yaml"), SVC.replace("name: web", "name: api")).unwrap();
    let mut files = BTreeMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    first_scan(&dir, &mut files, &tx).await.unwrap();
    drop(tx);
    let mut first = Vec::new();
    while let Some(ev) = rx.recv().await {
        first.push(ev);
    }
    let applied: Vec<(Kind, String)> = first[..2]
        .iter()
        .map(|ev| match ev {
            Event::Apply(o) => (o.kind(), o.key().name),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(applied, [(Kind::Service, "web".to_string()), (Kind::Service, "api".to_string())]);
    assert_eq!(first[2..], [Event::Synced]);
    assert!(scan(&dir, &mut files, None).is_empty(), "nothing changed");
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    assert!(matches!(scan(&dir, &mut files, None).as_slice(), [Event::Delete(k)] if k.name == "api"));

    // Move the object to another file: applied, not deleted.
    std::fs::write(dir.join("b.yaml"), SVC).unwrap();
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    let moved = scan(&dir, &mut files, None);
    assert!(matches!(moved.as_slice(), [Event::Apply(_)]), "{moved:?}");

    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    let gone = scan(&dir, &mut files, None);
    assert!(matches!(gone.as_slice(), [Event::Delete(k)] if k.name == "web"), "{gone:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the watcher's paths, only those files are read; a file not named is left alone even if changed.
#[test]
fn scan_only_named_files() {
    let dir = tmpdir("only");
    std::fs::write(dir.join("a.yaml"), SVC).unwrap();
    std::fs::write(dir.join("b.yaml"), SVC.replace("name: web", "name: api")).unwrap();
    let mut files = BTreeMap::new();
    assert_eq!(scan(&dir, &mut files, None).len(), 2);
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    std::fs::write(dir.join("b.yaml"), SVC.replace("name: web", "name: api2")).unwrap();
    let named: BTreeSet<PathBuf> = [dir.join("a.yaml")].into_iter().collect();
    let ev = scan(&dir, &mut files, Some(&named));
    assert!(matches!(ev.as_slice(), [Event::Delete(k)] if k.name == "web"), "{ev:?}");
    let ev = scan(&dir, &mut files, None);
    assert_eq!(ev.len(), 2, "the full scan finds b.yaml's change: {ev:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
