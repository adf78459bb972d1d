"""Run every ```sql block of the given pages (README.md, docs/datasets.md) in
DuckDB from a folder holding runs/demo: check_duckdb.py ROOT PAGE...

Each query must succeed and return at least one row; every Parquet file of the
run must carry the wrpo key-value metadata. Prints 'N passed, N failed'.
"""
import pathlib
import re
import sys

import duckdb

root, pages = pathlib.Path(sys.argv[1]), [pathlib.Path(p) for p in sys.argv[2:]]
queries = [q for page in pages for q in re.findall(r"```sql\n(.*?)```", page.read_text(), re.S)]
con = duckdb.connect()
con.execute(f"SET file_search_path = '{root}'")
passed, failed = 0, 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
    except Exception as e:  # report and go on, so one run shows every failure
        failed += 1
        print(f"FAILED {name}: {e}", file=sys.stderr)


def run_query(q):
    rows = con.execute(q).fetchall()
    assert rows, "no rows"
    print(f"ok ({len(rows)} rows): {q.strip().splitlines()[0]}")


for q in queries:
    check(q.strip().splitlines()[0], lambda q=q: run_query(q))

for f in sorted((root / "runs/demo").rglob("*.parquet")):
    def has_meta(f=f):
        kv = dict(con.execute(f"SELECT decode(key), decode(value) FROM parquet_kv_metadata('{f}')").fetchall())
        for key in ["wrpo.schema", "wrpo.schema_version", "wrpo.producer", "wrpo.command", "wrpo.config", "wrpo.inputs"]:
            assert key in kv, f"{key} missing"
    check(f"metadata of {f.relative_to(root)}", has_meta)

print(f"duckdb: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
