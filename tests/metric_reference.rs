//! The README's metric table is the code's single list of metric names, rendered: a metric added,
//! renamed or documented differently in one place and not the other fails here.

#[test]
fn readme_metric_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = rapport::telemetry::names::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's metric table is out of date; replace it with the output of `rapport metrics`:\n{table}"
    );
}

#[test]
fn every_metric_name_follows_the_convention() {
    for (name, kind, _, _) in rapport::telemetry::names::ALL {
        assert!(name.starts_with("rapport_"), "{name}");
        assert_eq!(*kind == "counter", name.ends_with("_total"), "{name}: counters, and only counters, end in _total");
    }
}
