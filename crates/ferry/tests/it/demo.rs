//! `ferry demo` runs the whole story on its own throwaway clusters.

use crate::harness::ferry;

#[test]
fn heavy_demo_runs_end_to_end_and_cleans_up() {
    let run = ferry(&["demo", "--rows", "20000"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("Full load of migration demo"), "{}", run.stdout);
    assert!(!run.stdout.contains("DIFFERENT"), "{}", run.stdout);
    assert_eq!(run.stdout.matches("rows  identical").count(), 9, "{}", run.stdout);
    // A verification at one consistent point while the demo application writes.
    assert!(run.stdout.contains("Verification at source position"), "{}", run.stdout);
    assert!(run.stdout.contains("Result: the target equals the source."), "{}", run.stdout);
    // It ends with a cutover under load: the pause is printed, no transaction failed, and
    // writes made on the target afterwards reached the source through reverse replication.
    assert!(run.stdout.contains("cutover done: application paused"), "{}", run.stdout);
    assert!(run.stdout.contains("not one failed"), "{}", run.stdout);
    assert!(run.stdout.contains("are on the source too"), "{}", run.stdout);
    assert!(run.stdout.contains("Migration demo: phase cut_over"), "{}", run.stdout);
    assert!(run.stderr.contains("Cleaned up"), "{}", run.stderr);
    // The generated password never appears except masked.
    assert!(run.all().contains("postgres:****@"), "{}", run.all());
}
