"""Stage `evaluate`: teacher and every student on dev/test: metrics, retention, size, latency."""

from kdpipe.stage import stage

with stage("evaluate", ["evaluate"], reads=["models/teacher"]) as s:
    from kdpipe.config import student_name
    from kdpipe.files import write_json
    from kdpipe.pipeline.evaluate import PREDICTIONS_DIR, evaluate_models, tradeoff_rows
    from kdpipe.evaluation.charts import plot_curves, plot_tradeoff

    report = evaluate_models(s.params, s.path("data/prepared"), s.path("models/teacher"),
                             s.path("models/students"), s.path(PREDICTIONS_DIR))
    main = report["main_metric"]
    write_json(s.path("metrics/evaluate.json"), report)
    write_json(s.path("plots/tradeoff.json"), tradeoff_rows(report))
    plot_tradeoff(report, s.path("plots/charts/tradeoff.png"))
    # each run's curves: its first seed's (the student exported)
    plot_curves(s.path("plots"), ["teacher", *(student_name(run, r["seeds"][0]) for run, r in report["students"].items())],
                main, s.path("plots/charts/curves.png"))

    s.tracker.log_metrics({"teacher": report["teacher"], **report["students"]})
    s.tracker.log_pipeline_metrics({f"{name}.dev.{main}": r["dev"][main] for name, r in
                                    [("teacher", report["teacher"]), *report["students"].items()]} |
                                   {f"{name}.dev.{main}_std": r["dev_std"][main] for name, r in
                                    report["students"].items()})
    s.tracker.log_artifact(s.path("metrics/evaluate.json"))
    s.tracker.log_artifact(s.path("plots/charts"), "charts")
    print(f"teacher dev {main}: {report['teacher']['dev'][main]:.4f}")
    for name, r in report["students"].items():
        print(f"{name} dev {main}: {r['dev'][main]:.4f} ± {r['dev_std'][main]:.4f} over {len(r['seeds'])} seed(s) (retention {r['retention_pct'].get('dev')}%, "
              f"speed-up at batch 1: {r['speedup'].get('batch_1')}x)")
