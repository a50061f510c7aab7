from seqlab.harness.bench import BenchCell, bench_table, growth_summary, plot_bench, run_bench


def test_bench_measures_throughput_memory_and_plots(tmp_path):
    cells = [
        BenchCell("attention", t, d_model=32, n_layers=1, train_steps=2, decode_steps=4)
        for t in (16, 64)
    ]
    rows = run_bench(cells, isolate=False, progress=False)
    assert len(rows) == 2
    for row in rows:
        assert row["train_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
        assert row["peak_mb"] >= 0
    assert rows[1]["state_size"] == 4 * rows[0]["state_size"]
    assert "| attention | 64 |" in bench_table(rows)
    assert "attention: T 16 -> 64" in growth_summary(rows)
    path = plot_bench(rows, tmp_path / "bench.png")
    assert path.stat().st_size > 5000


def test_isolated_cell_runs_in_its_own_process():
    (row,) = run_bench(
        [BenchCell("attention", 8, d_model=16, n_layers=1, train_steps=1, decode_steps=1)],
        progress=False,
    )
    assert row["mixer"] == "attention" and row["params"] > 0
