"""One tiny end-to-end world, built once per session and reused by most tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from advbench.testing import registry_with, run_tiny, tiny_benchmark

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def registry():
    return registry_with()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, registry):
    """A completed tiny benchmark: (RunResult, its directory). Do not modify its files."""
    root = tmp_path_factory.mktemp("tiny-world")
    result = run_tiny(root, tiny_benchmark(attacks=['plugin = "fgsm"\nepsilons = [0.1, 0.2, 0.3]', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'],
                                           detectors=['plugin = "lda"', 'plugin = "svm"'],
                                           features=['plugin = "counting"', 'plugin = "differences"'], images=40),
                      registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    return result, root


EVALUATION_DETECTION = ('protocol = "leave-one-attack-out"\n'
                        'subset_search = [{ detector = "lda", feature = "counting", group = "All", max_operations = 2 }]')
EVALUATION_ADAPTIVE = ('[[adaptive]]\nplugin = "eot-pgd"\nbudgets = [0.1, 0.3]\nsteps = 8\nrandom_start = false\n'
                       'targets = [{ group = "JPEG" }]\n\n'
                       '[[adaptive]]\nplugin = "system-hsj"\nmax_queries = 150\niterations = 4\ninit_evals = 10\n'
                       'max_evals = 20\ninit_queries = 20\ntargets = [{ detector = "lda", feature = "counting", group = "JPEG" }]\n')


@pytest.fixture(scope="session")
def evaluation_run(tmp_path_factory, registry):
    """A completed tiny run with every evaluation-set cell: a budget grid (fgsm-grid@0.1, @0.3),
    leave-one-attack-out detectors, a subset search, and adaptive sets (EOT-PGD against the JPEG
    operations at 0.1 and 0.3, label-only HopSkipJump against an LDA detector).
    (RunResult, its directory); do not modify its files."""
    root = tmp_path_factory.mktemp("evaluation-world")
    toml = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5',
                                   'plugin = "fgsm"\nname = "fgsm-grid"\nbudgets = [0.1, 0.3]'],
                          detection=EVALUATION_DETECTION, extra=EVALUATION_ADAPTIVE, images=40)
    result = run_tiny(root, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    return result, root


# 10/255 and 51/255 (= 0.2): whole 8-bit steps, so a float attack inside the ball rounds inside it
# and the robust cell's first member meets the adaptive cell of the same configuration exactly;
# eot-pgd samples all 5 operations of the group, so it draws nothing at random and each image's
# run does not depend on the others in its batch
ROBUST_MEMBERS = {
    "eot": '[[robust.members]]\nplugin = "eot-pgd"\nname = "eot-ce"\nsteps = 10\neot_samples = 5\nrandom_start = false\n',
    "rank": '[[robust.members]]\nplugin = "rank-eot"\nsteps = 20\neot_samples = 3\nper_budget = { rel_stepsize = [0.2, 0.1] }\n',
    "opgd": '[[robust.members]]\nplugin = "opgd"\nsteps = 10\n',
}


def robust_entry(name: str, members: list[str], targets: str) -> str:
    return (f'[[robust]]\nname = "{name}"\nbudgets = ["10/255", "51/255"]\ntargets = {targets}\n\n'
            + "\n".join(ROBUST_MEMBERS[m] for m in members))


ROBUST_TARGETS = '[{ detector = "lda", feature = "differences", group = "All" }, "pipeline"]'
EVALUATION_ROBUST = "\n".join([
    robust_entry("ensemble", ["eot", "rank", "opgd"], ROBUST_TARGETS),
    robust_entry("eot-alone", ["eot"], ROBUST_TARGETS),
    robust_entry("rank-alone", ["rank"], ROBUST_TARGETS),
    '[[adaptive]]\nplugin = "eot-pgd"\nbudgets = [0.0392156862745098, 0.2]\nsteps = 10\neot_samples = 5\n'
    'random_start = false\ntargets = [{ detector = "lda", feature = "differences", group = "All" }]\n',
    '[correction]\npipeline = { detector = "lda", feature = "differences", group = "All" }\n',
])


@pytest.fixture(scope="session")
def robust_run(tmp_path_factory, registry):
    """A completed tiny run with [[robust]] entries at 10/255 and 51/255 against LDA on the
    differences of all operations and the pipeline: an ensemble (eot-pgd, rank-eot, opgd) and each
    of its first two members alone, beside an [[adaptive]] eot-pgd of the first member's
    configuration at 10/255 and 51/255. (RunResult, its directory); do not modify its files."""
    root = tmp_path_factory.mktemp("robust-world")
    toml = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'],
                          detectors='plugin = "lda"', features='plugin = "differences"', extra=EVALUATION_ROBUST,
                          images=60)
    result = run_tiny(root, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    return result, root


@pytest.fixture
def advbench(monkeypatch, capsys, registry):
    """``advbench ARGS`` run in this process with the tiny world: (exit code, stdout, stderr)."""
    import advbench.cli as cli

    monkeypatch.setattr(cli, "discover", lambda: registry)

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def requires_shared(path: str = "") -> Path:
    target = SHARED / path
    if not target.exists():
        pytest.skip(f"needs ../shared/{path} (reference data absent in this checkout)")
    return target


# --- PostgreSQL for the store tests ---------------------------------------------------------
# A real server: $ADVBENCH_TEST_POSTGRES_URL (a database on which the user may CREATE DATABASE),
# else a throwaway cluster of Debian's PostgreSQL binaries (initdb + pg_ctl, unix socket only,
# fsync off), started once per session and deleted after. Where neither can be had, the tests
# that need it skip and say why.

POSTGRES_ENV = "ADVBENCH_TEST_POSTGRES_URL"


def _pg_bindir() -> Path | None:
    import re

    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()]
    return max(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0]) if found else None


def _start_cluster(bindir: Path):
    """initdb + pg_ctl start in a fresh temp dir; returns (admin URL, stop callback)."""
    import shutil
    import socket
    import subprocess
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="advbench-pg-"))  # under /tmp: the postgres user must reach it
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("PostgreSQL: running as root and there is no 'postgres' user to run the server as")
        for path in (root, sock):
            shutil.chown(path, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
        if not prefix:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("PostgreSQL: running as root without runuser to start the server as 'postgres'")

    def run(*cmd: object) -> None:
        done = subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            if log.exists():
                tail += log.read_text(errors="replace").strip().splitlines()[-3:]
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"PostgreSQL: {Path(str(cmd[0])).name} failed: {' | '.join(tail)}")

    with socket.socket() as s:  # a free port: it names the socket file; no TCP listener is opened
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60",
        "-o", f"-F -p {port} -k {sock} -c listen_addresses='' -c max_connections=200", "start")

    def stop() -> None:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}", stop


@pytest.fixture(scope="session")
def postgres_server():
    """An SQLAlchemy engine (AUTOCOMMIT) on a PostgreSQL server where databases may be created."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip('PostgreSQL: the driver psycopg is not installed; pip install -e ".[postgres]"')
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    stop = None
    if os.environ.get(POSTGRES_ENV):
        url = make_url(os.environ[POSTGRES_ENV])
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
    else:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip(f"PostgreSQL: no server; set {POSTGRES_ENV} or install Debian's postgresql package "
                        "(no initdb under /usr/lib/postgresql/*/bin)")
        url, stop = _start_cluster(bindir)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect is a reason to skip
        engine.dispose()
        if stop:
            stop()
        pytest.skip(f"PostgreSQL: cannot connect to {make_url(url).render_as_string()}: {str(exc).splitlines()[0]}")
    yield engine
    engine.dispose()
    if stop:
        stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    import uuid

    from sqlalchemy import text

    name = f"advbench_test_{uuid.uuid4().hex[:12]}"
    try:
        with postgres_server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL: cannot create a test database: {str(exc).splitlines()[0]}")
    yield postgres_server.url.set(database=name).render_as_string(hide_password=False)
    with postgres_server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh results store on each backend: a SQLite file, then an empty PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: on a small shared machine extra
    threads only contend (several times slower); use it with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def run_thread_count():
    """The suite computes with a run's thread count (advbench.threads: one unless
    $ADVBENCH_THREADS or $OMP_NUM_THREADS say otherwise): torch's default, every core, made it
    several times slower on a busy machine, and a run's numbers depend on the count."""
    from advbench import threads

    with threads.limited(threads.choose().threads):
        yield
