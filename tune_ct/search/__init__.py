"""The search stage: a frozen plan from the typed options, the trials run by Ray Tune, the results read, the winner
tested once on the locked split and published, one SearchSummary that every output reads.

    options.py   SearchOptions: what the command line asked for
    checks.py    the checks that write nothing (space, metric, weights, tracking server), before Ray and MLflow load
    plan.py      SearchPlan: the data, the study, the selection set, the segmenter
    cluster.py   Ray started, the plan fitted to the cluster's resources
    trials.py    the parent run opened, the caches built, the Tuner built and run
    results.py   what the trials gave: study settled, orphaned runs closed, the winner (or Pareto pick)
    final_test.py  the winner on the locked test split, published and registered
    summary.py   SearchSummary, built once when the search is over
    record.py    the summary and the winner's figures on the MLflow parent run
    console.py   what the search prints at the end
    notes.py     the Markdown descriptions MLflow shows (parent run, registered version)
    pipeline.py  run_search: the steps above, in order; a stop by signal closes everything cleanly
    markdown_report.py  `python -m tune_ct.report`: a search's report from what it logged
"""
