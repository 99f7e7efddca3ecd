"""Every hostile input kind: imported correctly or rejected with a reason, never a crash,
never a write outside the workspace, memory bounded (run under an address-space limit)."""

import json
import subprocess
import sys
import textwrap

from conftest import REPO
from hostile_files import make_corpus

IMPORT_UNDER_LIMIT = textwrap.dedent("""
    import json, resource, sys
    limit = 3 * 1024 ** 3  # 3 GB of address space: a decoded bomb would need 1.2 GB+ per copy
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from core.storage import ingest
    from core._internal.memory import peak_rss_mb
    from core.storage.catalog import Catalog
    report = ingest.import_paths(Catalog(sys.argv[1]), sys.argv[2:])
    peak = peak_rss_mb()
    print(json.dumps({"rejected": [[r.name, r.reason] for r in report.rejected],
                      "skipped": [s.name for s in report.skipped], "names": list(report.names.values()),
                      "peak_mb": peak}))
""")


def test_hostile_corpus(tmp_path):
    cases = make_corpus(tmp_path / "inbox")
    workspace = tmp_path / "deep" / "workspace"
    result = subprocess.run([sys.executable, "-c", IMPORT_UNDER_LIMIT, str(workspace),
                             *[str(path) for path, _ in cases.values()]],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rejected = {name: reason for name, reason in report["rejected"]}
    imported = set(report["names"])
    for case, (path, expected) in cases.items():
        name = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if path.suffix == ".zip":
            members = {n: r for n, r in rejected.items() if n.startswith(name + ":")}
            if expected == "rejected":
                assert members or name in rejected, case
            else:
                assert any(n.startswith(name + ":") for n in imported), case
        elif expected == "imported":
            assert name in imported, f"{case} should be imported: {rejected.get(name)}"
        else:
            assert name in rejected and len(rejected[name]) > 10, f"{case} should be rejected with a reason"
    assert "megapixels" in rejected[str(cases["12000x12000 real-size image"][0])]
    assert "megapixels" in rejected[str(cases["decompression bomb (20000x20000 PNG)"][0])]
    assert any("zip bomb" in r for n, r in rejected.items() if "bomb.zip" in n)
    assert any("unsafe path" in r for n, r in rejected.items() if "slip.zip" in n)
    assert sorted(s.rsplit(":", 1)[1] for s in report["skipped"]) == ["shoot/Fruit/prices.xlsx", "shoot/readme.txt"]
    assert not (tmp_path / "escaped.jpg").exists() and not (tmp_path / "deep" / "escaped.jpg").exists()
    assert report["peak_mb"] < 500, f"import used {report['peak_mb']:.0f} MB"
