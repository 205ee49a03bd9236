"""The scheduling and deployment assets in ops/ are well formed, agree with each other, and only
use commands and options the `cdc` CLI really has. No Docker, systemd or Windows needed."""

from __future__ import annotations

import codecs
import math
import ntpath
import posixpath
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cdc.cli import cli
from cdc.infra.redact import secrets_in

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
TASK_NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"
NS = {"t": TASK_NS}
ENV_FILE = "/etc/orininu-cdc/cdc.env"
EVERY_5_MINUTES = "*/5 * * * *"
# Being added to `cdc run` in parallel; checked as soon as the command has it.
PENDING_OPTIONS = {"run": {"--metrics-port"}}


# ---- reading -----------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A text asset, decoded by its byte-order mark (the Task Scheduler XML is UTF-16)."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig")


def asset_files() -> list[Path]:
    # a local ops/.env (compose's password file) is the user's, not an asset
    return sorted(p for p in OPS.rglob("*") if p.is_file() and not p.name.startswith(".env"))


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(read_text(path)) if doc is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"
    return docs


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: sections of keys, each key with every value it was given, in order.
    Any line that is neither a comment, a section header nor ``Key=value`` fails."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(read_text(path).splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        assert not stripped.endswith("\\"), f"{path.name}:{number}: no line continuations, please"
        header = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if header:
            assert header.group(1) not in sections, f"{path.name}:{number}: section [{header.group(1)}] twice"
            current = sections.setdefault(header.group(1), {})
            continue
        key_value = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)", stripped)
        assert key_value, f"{path.name}:{number}: not Key=value: {line!r}"
        assert current is not None, f"{path.name}:{number}: key outside any section"
        current.setdefault(key_value.group(1), []).append(key_value.group(2))
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"expected exactly one {key}=, found {values}"
    return values[0]


# ---- `cdc` invocations -------------------------------------------------------------------------

_SHELL_OPERATORS = re.compile(r"^(?:&&|\|\||[;|&(){}]|[<>]+&?)$")


def is_cdc(token: str) -> bool:
    return ntpath.basename(posixpath.basename(token)).lower() in {"cdc", "cdc.exe"}


def split_shell(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def cdc_invocations(command_line: str) -> list[list[str]]:
    """The arguments of every `cdc` call in a shell command line, up to the next shell operator."""
    try:
        tokens = split_shell(command_line)
    except ValueError:  # prose with an unbalanced quote
        tokens = command_line.split()
    found: list[list[str]] = []
    for index, token in enumerate(tokens):
        if not is_cdc(token):
            continue
        args: list[str] = []
        for following in tokens[index + 1 :]:
            if _SHELL_OPERATORS.match(following) or following.startswith(("#", ">", "<")):
                break
            args.append(following)
        if len(args) > 1 and args[-1].isdigit() and index + len(args) + 1 < len(tokens):
            nxt = tokens[index + len(args) + 1]
            if nxt.startswith((">", "<")):  # `2>&1`: the 2 is the redirected stream
                args.pop()
        found.append(args)
    return found


def _without_pending_options(command: click.Command, args: list[str]) -> list[str]:
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    pending = PENDING_OPTIONS.get(command.name or "", set()) - known
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg in pending:
            skip_value = True
        elif arg.split("=", 1)[0] not in pending:
            kept.append(arg)
    return kept


def invocation_problems(args: list[str]) -> list[str]:
    """Why running ``cdc ARGS`` would be a usage error (unknown command or option, wrong arity), if it would."""
    command: click.Command = cli
    path = "cdc"
    remaining = list(args)
    while True:
        remaining = _without_pending_options(command, remaining)
        ctx = click.Context(command, info_name=path)
        try:
            _values, positional, _order = command.make_parser(ctx).parse_args(list(remaining))
        except click.UsageError as exc:
            return [f"`{' '.join([path, *remaining])}`: {exc.format_message()}"]
        problems = [
            f"`{path}`: {opt} puts a credential on the command line" for opt in ("--pg", "--mongo") if opt in remaining
        ]
        if isinstance(command, click.Group):
            if not positional:
                return [*problems, f"`{path}` needs a subcommand"]
            name, remaining = positional[0], positional[1:]
            if name not in command.commands:
                return [*problems, f"`{path} {name}`: no such command (has: {', '.join(sorted(command.commands))})"]
            command, path = command.commands[name], f"{path} {name}"
            continue
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        most = sum(math.inf if p.nargs < 0 else p.nargs for p in arguments)
        least = sum(max(p.nargs, 1) for p in arguments if p.required)
        if not least <= len(positional) <= most:
            problems.append(f"`{path}`: takes {least}..{most} arguments, given {positional}")
        return problems


def _options_taking_a_value(command: click.Command) -> dict[str, bool]:
    """Every option name of ``command`` (help and pending ones included), and whether it takes a value."""
    found = {"-h": False, "--help": False} | dict.fromkeys(PENDING_OPTIONS.get(command.name or "", set()), True)
    for param in command.params:
        if isinstance(param, click.Option):
            found |= dict.fromkeys((*param.opts, *param.secondary_opts), not (param.is_flag or param.count))
    return found


def mention_problems(args: list[str]) -> list[str]:
    """Prose that names ``cdc ARGS`` (e.g. "`cdc run --metrics-port`"): the commands and options must
    exist, but option values may be left out."""
    command: click.Command = cli
    path = "cdc"
    tokens = iter(args)
    for token in tokens:
        if token.startswith("-"):
            takes_value = _options_taking_a_value(command).get(token.split("=", 1)[0])
            if takes_value is None:
                return [f"`{path}` has no option {token}"]
            if takes_value and "=" not in token:
                next(tokens, None)  # its value
        elif isinstance(command, click.Group):
            if token not in command.commands:
                return [f"`{path} {token}`: no such command (has: {', '.join(sorted(command.commands))})"]
            command, path = command.commands[token], f"{path} {token}"
        # else: a value or argument of a leaf command
    return []


def test_the_invocation_checker_catches_mistakes() -> None:
    assert invocation_problems(["run", "--once"]) == []
    assert invocation_problems(["--log-format", "json", "run", "--listen", "--interval", "60"]) == []
    assert invocation_problems(["run", "--metrics-port", "9108", "--listen"]) == []
    assert invocation_problems(["capture", "install"])  # the command is `cdc install`
    assert invocation_problems(["run", "--no-such-option"])
    assert invocation_problems(["run", "--interval"])  # missing value
    assert invocation_problems(["schema"])  # a group needs a subcommand
    assert invocation_problems(["status", "extra"])  # no positional arguments
    assert invocation_problems(["run", "--pg", "postgresql://cdc@db/orininu"])  # credentials are not arguments
    assert mention_problems([]) == []  # "the `cdc` command"
    assert mention_problems(["run", "--metrics-port"]) == []
    assert mention_problems(["--log-format", "json", "status", "--json"]) == []
    assert mention_problems(["capture", "install"])
    assert mention_problems(["status", "--no-such-option"])
    assert cdc_invocations("cd /x && exec flock -n l /opt/v/bin/cdc run --once; } >>log 2>&1") == [["run", "--once"]]
    assert cdc_invocations("cdc schema apply && cdc install") == [["schema", "apply"], ["install"]]
    assert is_cdc("C:\\orininu-cdc\\.venv\\Scripts\\cdc.exe")
    assert not is_cdc("orininu-cdc")


# ---- Windows Task Scheduler ----------------------------------------------------------------------

TASK_XML = OPS / "windows" / "cdc-sync.xml"


def test_task_xml_declares_its_real_encoding() -> None:
    raw = TASK_XML.read_bytes()
    declared = re.match(r'<\?xml[^>]*encoding="([^"]+)"', read_text(TASK_XML))
    assert declared, "the XML declaration names no encoding"
    actual = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8"
    assert codecs.lookup(declared.group(1)).name.startswith(actual)


def test_task_xml_runs_cdc_once_every_5_minutes() -> None:
    task = ET.fromstring(TASK_XML.read_bytes())
    assert task.tag == f"{{{TASK_NS}}}Task"
    intervals = [e.text for e in task.findall("t:Triggers/*/t:Repetition/t:Interval", NS)]
    assert intervals == ["PT5M"]
    # no Duration (or an empty one) repeats indefinitely
    assert not [e.text for e in task.findall("t:Triggers/*/t:Repetition/t:Duration", NS) if e.text]
    assert task.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=NS) == "IgnoreNew"
    actions = task.findall("t:Actions/t:Exec", NS)
    assert len(actions) == 1
    assert is_cdc(actions[0].findtext("t:Command", default="", namespaces=NS))
    arguments = actions[0].findtext("t:Arguments", default="", namespaces=NS)
    assert arguments.split() == ["run", "--once"]
    assert task.findall("t:Principals/t:Principal/t:Password", NS) == []


# ---- systemd -----------------------------------------------------------------------------------

SYSTEMD = OPS / "systemd"


def exec_start(unit: dict[str, dict[str, list[str]]]) -> list[str]:
    argv = shlex.split(one(unit["Service"], "ExecStart"))
    assert argv[0].startswith("/"), "systemd wants an absolute path to the executable"
    assert is_cdc(argv[0])
    return argv[1:]


def test_worker_service() -> None:
    unit = parse_unit(SYSTEMD / "cdc-worker.service")
    assert {"Unit", "Service", "Install"} <= unit.keys()
    service = unit["Service"]
    args = exec_start(unit)
    assert args[:2] == ["run", "--listen"]
    assert "--once" not in args
    assert one(service, "Restart") == "on-failure"
    assert re.fullmatch(r"\d+s?", one(service, "RestartSec"))
    assert one(service, "EnvironmentFile") == ENV_FILE
    assert one(service, "KillSignal") == "SIGTERM"
    assert one(service, "TimeoutStopSec")
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    archive = dict(v.split("=", 1) for v in service.get("Environment", []))["CDC_ARCHIVE_DIR"]
    writable = [p.lstrip("-") for v in service.get("ReadWritePaths", []) for p in v.split()]
    assert any(Path(archive).is_relative_to(p) for p in writable), "the archive folder must stay writable"
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
    # the worker and the timer are alternatives (the worker holds the lock the timer's runs wait for)
    assert "cdc-once.timer" in " ".join(unit["Unit"].get("Conflicts", []))


def test_once_service_and_timer() -> None:
    once = parse_unit(SYSTEMD / "cdc-once.service")
    assert one(once["Service"], "Type") == "oneshot"
    assert exec_start(once) == ["run", "--once"]
    assert one(once["Service"], "EnvironmentFile") == ENV_FILE
    assert "Install" not in once, "started by the timer, not enabled itself"

    timer = parse_unit(SYSTEMD / "cdc-once.timer")
    assert {"Unit", "Timer", "Install"} <= timer.keys()
    schedule = timer["Timer"]
    assert schedule.get("OnCalendar") == ["*:0/5"] or schedule.get("OnUnitActiveSec") == ["5min"]
    assert one(schedule, "Persistent") == "true"
    assert (SYSTEMD / one(schedule, "Unit")).is_file()
    assert one(timer["Install"], "WantedBy") == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_timer_calendar_is_every_5_minutes_to_systemd() -> None:
    schedule = parse_unit(SYSTEMD / "cdc-once.timer")["Timer"]
    for spec in schedule.get("OnCalendar", []):
        result = subprocess.run(
            ["systemd-analyze", "calendar", spec], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "Normalized form: *-*-* *:00/5:00" in result.stdout


# ---- cron --------------------------------------------------------------------------------------

CRON = OPS / "cron" / "cdc.cron"


def cron_jobs() -> list[list[str]]:
    jobs = []
    for line in read_text(CRON).splitlines():
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"[A-Za-z_][A-Za-z0-9_]*=", line):
            continue
        jobs.append(line.split(None, 6))
    return jobs


def test_cron_line_runs_cdc_once_every_5_minutes() -> None:
    jobs = cron_jobs()
    assert len(jobs) == 1
    fields = jobs[0]
    assert len(fields) == 7, "/etc/cron.d format: five time fields, the user, the command"
    assert " ".join(fields[:5]) == EVERY_5_MINUTES
    user, command = fields[5], fields[6]
    assert user == "orininu-cdc"
    assert "%" not in command, "cron turns % into a newline"
    assert cdc_invocations(command) == [["run", "--once"]]
    tokens = split_shell(command)
    assert tokens[tokens.index("flock") + 1] == "-n", "skip a tick while the previous run still goes"
    assert ENV_FILE in tokens and tokens[tokens.index(ENV_FILE) - 1] == ".", "sources the env file"
    assert ">>" in tokens, "appends its output to a log file"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_cron_command_is_valid_shell() -> None:
    command = cron_jobs()[0][6]
    result = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


# ---- Kubernetes --------------------------------------------------------------------------------

K8S = OPS / "k8s"


@pytest.mark.parametrize("name", ["cronjob.yaml", "deployment.yaml"])
def test_k8s_documents_are_well_formed(name: str) -> None:
    for doc in load_yaml_docs(K8S / name):
        assert isinstance(doc.get("apiVersion"), str)
        assert isinstance(doc.get("kind"), str)
        assert isinstance(doc.get("metadata", {}).get("name"), str)
        assert doc["kind"] != "Secret", "a Secret in the manifest would overwrite the real one on every apply"


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def check_pod(pod: dict[str, Any], docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The pod's single container, its `cdc` arguments; the archive on a claim from the same file."""
    (container,) = pod["containers"]
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv and is_cdc(argv[0])
    assert {"secretRef": {"name": "orininu-cdc"}} in container.get("envFrom", [])
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    pvc_names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert mounts and all(claims[m["name"]] in pvc_names for m in mounts)
    assert any(Path(env["CDC_ARCHIVE_DIR"]).is_relative_to(m["mountPath"]) for m in mounts)
    return container, argv[1:]


def test_k8s_cronjob() -> None:
    docs = load_yaml_docs(K8S / "cronjob.yaml")
    cronjob = of_kind(docs, "CronJob")
    assert cronjob["apiVersion"] == "batch/v1"
    assert cronjob["spec"]["schedule"] == EVERY_5_MINUTES
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    _container, args = check_pod(pod, docs)
    assert args == ["run", "--once"]


def test_k8s_deployment() -> None:
    docs = load_yaml_docs(K8S / "deployment.yaml")
    deployment = of_kind(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    container, args = check_pod(template["spec"], docs)
    assert args[:2] == ["run", "--listen"]
    port = int(args[args.index("--metrics-port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe_port = container["livenessProbe"]["httpGet"]["port"]
    assert ports.get(probe_port, probe_port) == port
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    assert env.get("CDC_METRICS_HOST") == "0.0.0.0", "the probe and Prometheus reach the pod's address"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)


# ---- compose and the image ---------------------------------------------------------------------

COMPOSE = OPS / "compose.yaml"
DOCKERFILE = OPS / "Dockerfile"


def dockerfile_instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in read_text(DOCKERFILE).splitlines() if line.startswith(f"{name} ")]


def test_dockerfile() -> None:
    assert dockerfile_instruction("FROM") == ["python:3.12-slim"]
    (entrypoint,) = dockerfile_instruction("ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == ["cdc"], "exec form, so SIGTERM reaches cdc"
    assert any(line.startswith("pip install .") for line in dockerfile_instruction("RUN"))
    assert dockerfile_instruction("USER"), "does not run as root"


def compose_services() -> dict[str, Any]:
    (compose,) = load_yaml_docs(COMPOSE)
    services: dict[str, Any] = compose["services"]
    return services


def test_compose_servers() -> None:
    services = compose_services()
    postgres, mongo = services["postgres"], services["mongo"]
    assert postgres["image"] == "postgres:18"
    assert mongo["image"] == "mongo:8"
    assert "pg_isready" in str(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    # PostgreSQL 18 images refuse a volume on the old /var/lib/postgresql/data
    assert any(v.endswith(":/var/lib/postgresql") for v in postgres.get("volumes", []))
    command = mongo["command"]
    replica_set = command[command.index("--replSet") + 1]
    health = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate" in health
    assert f"_id: '{replica_set}'" in health
    assert "host: 'mongo:27017'" in health
    for name, service in services.items():
        if "image" in service and "build" not in service:  # a server
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_compose_worker() -> None:
    services = compose_services()
    worker = services["worker"]
    build = worker["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert worker.get("entrypoint") is None, "uses the image's `cdc` entrypoint"
    assert worker["command"][:2] == ["run", "--listen"]
    assert {"postgres", "mongo"} <= worker["depends_on"].keys()
    for server in ("postgres", "mongo"):
        assert worker["depends_on"][server]["condition"] == "service_healthy"
    env = worker["environment"]
    assert not secrets_in(env["CDC_PG_DSN"]), "the password comes from PGPASSWORD"
    assert env["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    replica_set = services["mongo"]["command"][services["mongo"]["command"].index("--replSet") + 1]
    assert f"replicaSet={replica_set}" in env["CDC_MONGO_URI"]
    if "--metrics-port" in worker["command"]:
        port = worker["command"][worker["command"].index("--metrics-port") + 1]
        assert env.get("CDC_METRICS_HOST") == "0.0.0.0", "published ports reach the container's address"
        assert any(str(p).endswith(f":{port}") for p in worker.get("ports", []))
    init = services["init"]
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert [args for line in init["command"] for args in cdc_invocations(line)] == [["schema", "apply"], ["install"]]


def test_testcontainers_use_the_compose_images() -> None:
    services = compose_services()
    fixtures = read_text(ROOT / "tests" / "fix_backends.py")
    for server in ("postgres", "mongo"):
        assert f'"{services[server]["image"]}"' in fixtures


# ---- every asset -------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"^(?:\$|<|\*\*\*$|\.\.\.$|…$)|CHANGE_?ME|REPLACE_?ME", re.I)
_PASSWORD_SETTING = re.compile(
    r"""(?P<key>\b[\w.-]*pass(?:word|wd)(?!_?file)[\w.-]*)["']?\s*[:=]\s*["']?(?P<value>[^\s"',)}\]]*)""", re.I
)


def password_literals(text: str) -> list[str]:
    """Password values written out in ``text``; references (``${VAR}``) and placeholders do not count."""
    found = list(secrets_in(text))
    found += [m.group("value") for m in _PASSWORD_SETTING.finditer(text)]
    return [value for value in found if value and not _PLACEHOLDER.search(value)]


def test_the_password_scan_catches_literals() -> None:
    assert password_literals("CDC_PG_DSN=postgresql://cdc:hunter2@db:5432/orininu") == ["hunter2"]
    assert password_literals("CDC_MONGO_URI: mongodb://app:s3cret@mongo:27017/") == ["s3cret"]
    assert password_literals("host=db password=hunter2") == ["hunter2", "hunter2"]
    assert password_literals("POSTGRES_PASSWORD: example") == ["example"]
    assert password_literals('PGPASSWORD="swordfish"') == ["swordfish"]
    assert password_literals("PGPASSWORD: ${POSTGRES_PASSWORD:?set it}") == []
    assert password_literals("PGPASSWORD='<password>' and PGPASSFILE=/etc/orininu-cdc/pgpass") == []


@pytest.mark.parametrize("path", asset_files(), ids=lambda p: str(p.relative_to(OPS)))
def test_no_password_literal_in_assets(path: Path) -> None:
    assert password_literals(read_text(path)) == []


def documented_invocations(path: Path) -> list[list[str]]:
    """`cdc` calls in backtick spans, in fenced code blocks, and in indented comment examples."""
    text = read_text(path)
    snippets = re.findall(r"`([^`\n]+)`", text)
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif in_fence or re.match(r"\s*#\s{3,}\S", line):
            snippets.append(line.lstrip().lstrip("#"))
    return [args for snippet in snippets for args in cdc_invocations(snippet)]


def structured_invocations() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    task = ET.fromstring(TASK_XML.read_bytes())
    for action in task.findall("t:Actions/t:Exec", NS):
        found.append(("windows", shlex.split(action.findtext("t:Arguments", default="", namespaces=NS))))
    for unit in SYSTEMD.glob("*.service"):
        found.append((unit.name, exec_start(parse_unit(unit))))
    found += [("cron", args) for args in cdc_invocations(cron_jobs()[0][6])]
    for manifest in K8S.glob("*.yaml"):
        for doc in load_yaml_docs(manifest):
            for container in _containers(doc):
                found.append((manifest.name, [*container.get("command", []), *container.get("args", [])][1:]))
    (cmd,) = dockerfile_instruction("CMD")
    found.append(("Dockerfile", yaml.safe_load(cmd)))
    for name, service in compose_services().items():
        command = service.get("command", [])
        if service.get("entrypoint") is None and "build" in service:  # the image's `cdc` entrypoint
            found.append((f"compose {name}", command))
        else:
            found += [(f"compose {name}", args) for line in command for args in cdc_invocations(line)]
    return found


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    containers: list[dict[str, Any]] = spec.get("template", {}).get("spec", {}).get("containers", [])
    return containers


def test_every_cdc_invocation_in_ops_is_a_real_command() -> None:
    invocations = structured_invocations()
    problems = [f"{where}: {problem}" for where, args in invocations for problem in invocation_problems(args)]
    mentions = [(str(path.relative_to(OPS)), args) for path in asset_files() for args in documented_invocations(path)]
    problems += [f"{where}: {problem}" for where, args in mentions for problem in mention_problems(args)]
    assert problems == []
    calls = {" ".join(args[:2]) for _where, args in [*invocations, *mentions]}
    assert {"run --once", "run --listen", "status", "schema apply", "install"} <= calls


def test_ops_readme_covers_every_asset() -> None:
    readme = read_text(OPS / "README.md")
    for path in asset_files():
        if path.name != "README.md":
            assert str(path.relative_to(OPS)) in readme, f"ops/README.md does not mention {path.relative_to(OPS)}"
    assert "cdc status" in readme
    assert "0600" in readme


# ---- the mongoimport path: export, mongoimport, mark-loaded ---------------------------------------

MONGOIMPORT_TASK_XML = OPS / "windows" / "cdc-mongoimport.xml"
MONGOIMPORT_CRON = OPS / "cron" / "cdc-mongoimport.cron"
LOAD_SH = OPS / "mongoimport" / "load-batches.sh"
LOAD_PS1 = OPS / "mongoimport" / "load-batches.ps1"


def script_cdc_calls(path: Path, caller: str) -> list[list[str]]:
    """The arguments of each ``caller ARGS`` line of a script (``"$CDC"`` in sh, ``& $cdc`` in PowerShell),
    up to a redirection or a shell operator; PowerShell variables stand for values."""
    found = []
    for line in read_text(path).splitlines():
        if line.lstrip().startswith("#") or caller not in line:
            continue
        rest = line.split(caller, 1)[1]
        args: list[str] = []
        for token in split_shell(rest.replace("$", "VAR_")):
            if _SHELL_OPERATORS.match(token) or token.startswith((">", "<")):
                break
            args.append(token)
        found.append(args)
    return found


def test_mongoimport_task_xml_runs_the_loader_every_5_minutes() -> None:
    raw = MONGOIMPORT_TASK_XML.read_bytes()
    assert raw.startswith(codecs.BOM_UTF16_LE), "UTF-16, as Task Scheduler exports it"
    assert 'encoding="UTF-16"' in read_text(MONGOIMPORT_TASK_XML)
    task = ET.fromstring(raw)
    assert [e.text for e in task.findall("t:Triggers/*/t:Repetition/t:Interval", NS)] == ["PT5M"]
    assert task.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=NS) == "IgnoreNew"
    assert task.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=NS) == "PT1H"
    assert task.findall("t:Principals/t:Principal/t:Password", NS) == []
    (action,) = task.findall("t:Actions/t:Exec", NS)
    assert action.findtext("t:Command", namespaces=NS) == "powershell.exe"
    arguments = action.findtext("t:Arguments", default="", namespaces=NS).split()
    assert {"-NoProfile", "-NonInteractive"} <= set(arguments)
    script = arguments[arguments.index("-File") + 1]
    assert ntpath.basename(script) == LOAD_PS1.name and LOAD_PS1.is_file()


def test_mongoimport_cron_line_runs_the_loader_every_5_minutes() -> None:
    jobs = [
        line.split(None, 6)
        for line in read_text(MONGOIMPORT_CRON).splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"[A-Za-z_][A-Za-z0-9_]*=", line)
    ]
    assert len(jobs) == 1
    fields = jobs[0]
    assert " ".join(fields[:5]) == EVERY_5_MINUTES and fields[5] == "orininu-cdc"
    command = fields[6]
    assert "%" not in command, "cron turns % into a newline"
    tokens = split_shell(command)
    assert tokens[tokens.index("flock") + 1] == "-n"
    assert tokens[tokens.index("timeout") + 1] == "1h"
    assert ENV_FILE in tokens and tokens[tokens.index(ENV_FILE) - 1] == "."
    assert any(posixpath.basename(token) == LOAD_SH.name for token in tokens)
    variables = dict(
        line.split("=", 1) for line in read_text(MONGOIMPORT_CRON).splitlines() if re.match(r"[A-Z_]+=", line)
    )
    assert is_cdc(variables["CDC"]), "the loader runs this cdc"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_mongoimport_loader_script_parses_and_calls_real_commands() -> None:
    result = subprocess.run(["sh", "-n", str(LOAD_SH)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    text = read_text(LOAD_SH)
    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    assert "umask 077" in text, "the mongoimport config file holds the URI"
    sh_calls = script_cdc_calls(LOAD_SH, '"$CDC"')
    ps_calls = script_cdc_calls(LOAD_PS1, "& $cdc")
    for calls in (sh_calls, ps_calls):
        assert [args[:2] for args in calls] == [["export", "--once"], ["archive", "mongoimport-commands"]]
        assert [problem for args in calls for problem in invocation_problems(args)] == []
        assert "--unloaded" in calls[1] and "--mark-loaded" in calls[1] and "--config" in calls[1]
    assert "--shell" in ps_calls[1] and ps_calls[1][ps_calls[1].index("--shell") + 1] == "powershell"
    assert "$LASTEXITCODE" in read_text(LOAD_PS1), "stops at the first line that fails"
