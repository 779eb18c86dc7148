"""`neuraxis run`: load resources, order them by their references, and run each through the
workload command its pod would run (`neuraxis workload ...`), with the operator's gating rules
(`neuraxis.operator.inputs`) and status rules (`neuraxis.operator.outcomes`). Results come back
through a termination-message file, as from a kubelet. Unchanged, finished resources are
skipped; a broken resource stops its dependents and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from neuraxis.crds import Dataset, EdgeDeployment, ModelVersion, Resource, TrainingJob
from neuraxis.lake import Lake, LakeError, neuraxis_home
from neuraxis.lake_access import LakeGrant, LakeScopeError, credentials_env, mint
from neuraxis.local.runlock import RunClaim, claim_run
from neuraxis.local.smoke import smoke_test
from neuraxis.local.spark_server import SharedSpark
from neuraxis.local.state import LocalStore, spec_digest
from neuraxis.operator.builders.edge import bundle_command
from neuraxis.operator.builders.training import pinned
from neuraxis.operator.children import short_uid
from neuraxis.operator.errors import InputNotReadyError, InvalidSpecError
from neuraxis.operator.inputs import (
    CR_VERSION,
    approved_artifact_digest,
    approved_evaluation_dataset,
    artifact_to_evaluate,
    check_references,
    dataset_refs,
    ensure_registered,
    pin_upstream,
    resolve_approved_model,
    resolve_dataset,
    resolve_dataset_ref,
    resolve_upstream,
)
from neuraxis.operator.lake_credentials import (
    bundling_grant,
    dataset_grant,
    evaluation_grant,
    training_grant,
)
from neuraxis.operator.outcomes import (
    Draft,
    add_federation,
    bundle_outcome,
    dataset_outcome,
    evaluation_outcome,
    status_from_draft,
    training_outcome,
)
from neuraxis.operator.settings import (
    LAKE_CREDENTIAL_MODES,
    LAKE_CREDENTIALS_ENV,
    OperatorSettings,
    parse_choice,
)
from neuraxis.references import GRANT_ANNOTATION
from neuraxis.resources import ResourceError, iter_documents, parse_resource
from neuraxis.workloads.artifact import (
    ARTIFACT_CHANGED,
    ArtifactChangedError,
    ArtifactIntegrityError,
    verify_artifact,
)
from neuraxis.workloads.result import TERMINATION_LOG_ENV, read_compact_result

KIND_ORDER = ("Dataset", "TrainingJob", "ModelVersion", "EdgeDeployment")
DONE_PHASES = ("Ready", "Succeeded", "Approved", "Serving", "Available")
SPEC_ANNOTATION = "neuraxis.dev/spec-digest"
INPUTS_ANNOTATION = "neuraxis.dev/inputs-digest"


@dataclass
class Entry:
    """One resource to run: the validated model, or the error that made it invalid."""

    kind: str
    name: str
    namespace: str
    resource: Resource | None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened to one resource in this run, for the summary."""

    kind: str
    name: str
    phase: str
    reason: str
    message: str
    seconds: float
    skipped: bool = False
    status: dict[str, Any] = field(default_factory=dict)


RUNNING_PHASE = {
    "Dataset": "Running",
    "TrainingJob": "Running",
    "ModelVersion": "Evaluating",
    "EdgeDeployment": "Pending",
}


def _run_phase(draft: Draft) -> str:
    """A finished local run's phase in status.runs (a gate verdict is a run that succeeded)."""
    return "Succeeded" if draft.phase in (*DONE_PHASES, "Rejected") else "Failed"


def new_run_id(prefix: str, earlier_runs: list[dict[str, Any]]) -> str:
    """`<prefix>-<UTC second>`, never the id of a run in `earlier_runs` (status.runs): a run
    that stops another within the same second still gets an id, a run folder and a status.runs
    entry of its own (`-2`, `-3`... after the second)."""
    stamp = f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    taken = {str(run.get("id")) for run in earlier_runs}
    run_id, count = stamp, 1
    while run_id in taken:
        count += 1
        run_id = f"{stamp}-{count}"
    return run_id


def references(res: Resource) -> list[tuple[str, str]]:
    """The resources this one reads (kind, name)."""
    if isinstance(res, Dataset):
        src = res.spec.source.from_
        if src and src.edge_deployment_ref:
            return [("EdgeDeployment", src.edge_deployment_ref.name)]
        return [("Dataset", src.dataset_ref.name)] if src and src.dataset_ref else []
    if isinstance(res, TrainingJob):
        return [("Dataset", ref.name) for ref in res.spec.dataset_refs()]
    if isinstance(res, ModelVersion):
        refs = []
        if res.spec.source.training_job_ref:
            refs.append(("TrainingJob", res.spec.source.training_job_ref.name))
        if res.spec.evaluation and res.spec.evaluation.dataset_ref:
            refs.append(("Dataset", res.spec.evaluation.dataset_ref.name))
        canary = res.spec.serving.canary if res.spec.serving else None
        if canary and canary.stable_ref:
            refs.append(("ModelVersion", canary.stable_ref.name))
        return refs
    assert isinstance(res, EdgeDeployment)
    return [("ModelVersion", res.spec.model_version_ref.name)]


def _declare_grant(wire: dict[str, Any], annotations: dict[str, str]) -> bool:
    """Copy the file's grant annotation (neuraxis/references.py) into the stored annotations,
    the only one of the file's that other namespaces' runs read; whether it changed."""
    declared = (wire["metadata"].get("annotations") or {}).get(GRANT_ANNOTATION)
    if declared == annotations.get(GRANT_ANNOTATION):
        return False
    if declared is None:
        annotations.pop(GRANT_ANNOTATION, None)
    else:
        annotations[GRANT_ANNOTATION] = declared
    return True


def load_entries(paths: Iterable[str | Path], namespace: str) -> list[Entry]:
    """Every resource in the files; an invalid one becomes an Entry carrying its error (with
    the API server's wording) instead of stopping the others."""
    entries: list[Entry] = []
    for file, doc in iter_documents(paths):
        kind = str(doc.get("kind")) if isinstance(doc, dict) else "?"
        name = str(((doc.get("metadata") or {}) if isinstance(doc, dict) else {}).get("name", "?"))
        try:
            res = parse_resource(doc)
        except ResourceError as exc:
            entries.append(Entry(kind, name, namespace, None, f"{file}: {exc}", raw=doc))
            continue
        res.metadata.namespace = res.metadata.namespace or namespace
        entries.append(Entry(res.kind, res.metadata.name, res.metadata.namespace, res))
    return entries


def order(entries: list[Entry]) -> list[Entry]:
    """Inputs before the resources that read them; otherwise by kind, then name."""
    by_key = {(e.kind, e.name): e for e in entries}
    ordered: list[Entry] = []
    visiting: set[tuple[str, str]] = set()
    done: set[tuple[str, str]] = set()

    def visit(entry: Entry) -> None:
        key = (entry.kind, entry.name)
        if key in done:
            return
        if key in visiting:
            entry.error = f"{entry.kind} {entry.name}: reference cycle"
            return
        visiting.add(key)
        for ref in references(entry.resource) if entry.resource else []:
            if ref in by_key:
                visit(by_key[ref])
        visiting.discard(key)
        done.add(key)
        ordered.append(entry)

    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    for entry in sorted(entries, key=lambda e: (rank.get(e.kind, 9), e.name)):
        visit(entry)
    return ordered


class Runner:
    """Runs entries in order against a lake and a local state folder."""

    def __init__(
        self,
        lake: Lake,
        store: LocalStore,
        *,
        force: bool = False,
        on_step: Callable[[str], None] | None = None,
    ):
        self.lake = lake
        self.store = store
        self.force = force
        self.on_step = on_step or (lambda _msg: None)
        self.work = neuraxis_home() / "work"
        self._claim: RunClaim | None = None
        self._on_workload_start: Callable[[int], None] | None = None
        # Set for the length of run(): its Dataset steps share one Spark process.
        self._shared_spark: SharedSpark | None = None

    # ---- one workload process, as a pod would run it --------------------------------------
    def workload(
        self,
        res: Resource,
        args: list[str],
        run_id: str,
        grant: LakeGrant | None = None,
        *,
        spark_step: bool = False,
    ) -> tuple[dict[str, Any] | None, Path]:
        """`grant`: with an s3:// lake and NEURAXIS_LAKE_CREDENTIALS=scoped, the process gets
        keys minted for exactly that (as the operator's pods do) instead of the runner's own.
        `spark_step`: an `etl` step, run in the run's shared Spark process when there is one
        and the step can use it (not with scoped keys: a JVM's lake keys are fixed at start)."""
        run_dir = self.work / (res.metadata.namespace or "default") / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        term = run_dir / "termination-log"
        term.unlink(missing_ok=True)
        log = run_dir / "workload.log"
        log.write_bytes(b"")  # there even when the workload is stopped before it writes
        env = {
            **os.environ,
            TERMINATION_LOG_ENV: str(term),
            "NEURAXIS_LAKE_URI": self.lake.root,
            "NEURAXIS_NAMESPACE": res.metadata.namespace or "default",
            **self.scoped_env(grant),
        }
        shared = self._shared_spark if spark_step and grant is None else None
        if shared is None or not self.in_shared_spark(shared, args, env, log):
            self.in_own_process(args, env, log)
        result = read_compact_result(term.read_text()) if term.exists() else None
        return result, log

    def in_own_process(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            # Its own process group: a later run of the same resource stops the whole workload.
            proc = subprocess.Popen(
                [sys.executable, "-m", "neuraxis.cli", "workload", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self._on_workload_start is not None:
                self._on_workload_start(proc.pid)
            proc.wait()

    def in_shared_spark(
        self, shared: SharedSpark, args: list[str], env: dict[str, str], log: Path
    ) -> bool:
        """Run the step in the shared Spark process; False when the step needs its own."""
        pid = shared.start(os.environ)
        if self._on_workload_start is not None:
            self._on_workload_start(pid)
        reply = shared.run_step(args, env, log)
        if reply is not None and "unsupported" in reply:
            with open(log, "a") as out:
                out.write(f"[runner] own Spark process: {reply['unsupported']}\n")
            return False
        return True

    def scoped_env(self, grant: LakeGrant | None) -> dict[str, str]:
        """The AWS_* keys of the grant (empty: the workload inherits the runner's keys)."""
        if grant is None or not self.scoping():
            return {}
        seconds = self.lake_settings().lake_credentials_seconds
        try:
            creds = mint(self.lake.root, grant, self.lake.s3, duration_s=seconds)
        except LakeScopeError as exc:
            raise InputNotReadyError("LakeCredentialsUnavailable", str(exc)) from exc
        return credentials_env(creds, self.lake.s3)

    def scoping(self) -> bool:
        """Scoped keys only where MinIO (or S3) is the lake: a file lake has no principals."""
        return self.lake.scheme == "s3" and self.lake_settings().lake_credentials == "scoped"

    def lake_settings(self) -> OperatorSettings:
        """The operator's lake settings as the runner uses them (NEURAXIS_LAKE_CREDENTIALS)."""
        return OperatorSettings(
            lake_uri=self.lake.root,
            lake_credentials=parse_choice(
                os.environ.get(LAKE_CREDENTIALS_ENV), LAKE_CREDENTIALS_ENV, LAKE_CREDENTIAL_MODES
            ),
        )

    def args(self, subcommand: str, spec: Path, namespace: str, run_id: str) -> list[str]:
        """The flags every workload takes, as the operator's pods pass them."""
        return [
            subcommand, "--spec", str(spec), "--namespace", namespace,
            "--run-id", run_id, "--lake", self.lake.root,
        ]  # fmt: skip

    def spec_file(self, res: Resource, run_id: str) -> Path:
        path = self.work / (res.metadata.namespace or "default") / run_id / "resource.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = res.to_wire()
        body.pop("status", None)
        path.write_text(yaml.safe_dump(body, sort_keys=True))
        return path

    @staticmethod
    def _no_result(log: Path) -> Draft:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        return Draft("Failed", "ResultMissing", f"the workload reported no result ({log}): {tail}")

    # ---- the four kinds --------------------------------------------------------------------
    def run_dataset(self, ds: Dataset, run_id: str) -> Draft:
        ns = ds.metadata.namespace or "default"
        upstream = resolve_upstream(ds, self.store)
        spec = self.spec_file(pin_upstream(ds, upstream), run_id)
        args = self.args("etl", spec, ns, run_id)
        grant = (
            dataset_grant(ds, upstream, self.lake_settings(), run_id) if self.scoping() else None
        )
        result, log = self.workload(ds, args, run_id, grant, spark_step=True)
        if result is None:
            return self._no_result(log)
        return dataset_outcome(result, self.lake.uri(Lake.table_path(ns, ds.metadata.name)))

    def run_training(self, tj: TrainingJob, run_id: str) -> Draft:
        if tj.spec.federation is not None:
            return self.run_federated_training(tj, run_id)
        ns = tj.metadata.namespace or "default"
        dataset = resolve_dataset(tj, self.store)
        spec = self.spec_file(pinned(tj, dataset), run_id)
        args = self.args("train", spec, ns, run_id)
        grant = (
            training_grant(tj, dataset, run_id, self.lake_settings()) if self.scoping() else None
        )
        result, log = self.workload(tj, args, run_id, grant)
        if result is None:
            return self._no_result(log)
        lineage = {
            "dataset": dataset.name,
            "datasetVersion": dataset.version,
            "datasetDigest": dataset.digest,
            "trainingJob": tj.metadata.name,
            "trainingJobUid": tj.metadata.uid,
        }
        inputs = (
            "InputsReady",
            True,
            "DatasetReady",
            f"Dataset {dataset.name} version {dataset.version}",
        )
        draft = training_outcome(
            result, {k: v for k, v in lineage.items() if v is not None}, inputs
        )
        if draft.phase == "Succeeded" and tj.spec.register_ is not None:
            draft.fields["modelVersion"] = ensure_registered(tj, draft.fields, self.store)
        return draft

    def run_federated_training(self, tj: TrainingJob, run_id: str) -> Draft:
        """SuperLink, one SuperNode per site and the server on loopback (the pods' commands,
        neuraxis/local/federated.py), each site pinned to its Dataset's Ready version, as the
        operator pins them; the status is made as the operator makes it (add_federation)."""
        from neuraxis.local.federated import run_federated
        from neuraxis.workloads.federated.roles import compact_result

        ns = tj.metadata.namespace or "default"
        job = tj.model_copy(deep=True)
        assert job.spec.federation is not None
        sites: list[dict[str, Any]] = []
        for site in job.spec.federation.sites:
            dataset = resolve_dataset_ref(site.dataset_ref, ns, self.store)
            site.dataset_ref.version = dataset.version
            sites.append(
                {"site": site.name, "dataset": dataset.name, "datasetVersion": dataset.version}
                | ({"datasetDigest": dataset.digest} if dataset.digest else {})
            )
        described = "; ".join(
            f"{s['site']}: Dataset {s['dataset']} version {s['datasetVersion']}" for s in sites
        )
        self.on_step(f"TrainingJob/{tj.metadata.name}: {len(sites)} sites, Flower on loopback")
        result = run_federated(job, self.lake, ns, run_id, self.work / ns / run_id / "federated")
        lineage = {"trainingJob": tj.metadata.name, "trainingJobUid": tj.metadata.uid}
        inputs = ("InputsReady", True, "DatasetsReady", described)
        draft = training_outcome(
            result, {k: v for k, v in lineage.items() if v is not None}, inputs
        )
        # What the operator reads: the termination message's compact copy of the result.
        add_federation(draft, compact_result(result), sites)
        if draft.phase == "Succeeded" and tj.spec.register_ is not None:
            draft.fields["modelVersion"] = ensure_registered(tj, draft.fields, self.store)
        return draft

    def run_model_version(self, mv: ModelVersion, run_id: str) -> Draft:
        ns = mv.metadata.namespace or "default"
        artifact_uri, expected, lineage = artifact_to_evaluate(mv, self.store)
        spec = self.spec_file(mv, run_id)
        args = [*self.args("evaluate", spec, ns, run_id), "--artifact-uri", artifact_uri]
        if expected:
            args += ["--artifact-digest", expected]
        grant = (
            evaluation_grant(
                mv, artifact_uri, lineage, Lake.run_path(ns, run_id), self.lake_settings()
            )
            if self.scoping()
            else None
        )
        result, log = self.workload(mv, args, run_id, grant)
        if result is None:
            return self._no_result(log)
        verdict, fields = evaluation_outcome(result)
        # evaluation_outcome pins the artifact the evaluation verified (uri and digest).
        fields = {"artifact": {"uri": artifact_uri}, "lineage": lineage, **fields}
        pinned = fields["artifact"].get("digest")
        if verdict is not None:
            verdict.fields = {**fields, **verdict.fields}
            return verdict
        serving = mv.spec.serving
        if serving is None or not serving.enabled:
            return Draft("Approved", "GatesPassed", "every gate passed", ready=True, fields=fields)
        self.on_step(f"ModelVersion/{mv.metadata.name}: serving smoke test")
        smoke = smoke_test(
            artifact_uri,
            mv.spec.model,
            self.lake,
            self.work / ns / run_id,
            digest=pinned,
            auth=serving.auth,
        )
        cond = (
            "ServingSmokeTest",
            smoke.passed,
            "SmokeTestPassed" if smoke.passed else "SmokeTestFailed",
            smoke.message,
        )
        if not smoke.passed:
            return Draft("Failed", smoke.reason, smoke.message, fields=fields, conditions=[cond])
        return Draft(
            "Approved",
            "GatesPassed",
            f"every gate passed; {smoke.message}",
            ready=True,
            fields=fields,
            conditions=[cond],
        )

    def run_edge(self, ed: EdgeDeployment, run_id: str) -> Draft:
        model, uri, lineage = resolve_approved_model(ed, self.store)
        digest = approved_artifact_digest(ed, self.store)
        heldout = approved_evaluation_dataset(ed, self.store)
        command = bundle_command(ed, model, run_id, uri, digest, heldout)
        grant = (
            bundling_grant(ed, model, run_id, uri, heldout, lineage, self.lake_settings())
            if self.scoping()
            else None
        )
        result, log = self.workload(ed, command[2:], run_id, grant)
        if result is None:
            return self._no_result(log)
        outcome = bundle_outcome(result)
        if isinstance(outcome, Draft):
            return outcome
        fields = {
            "bundle": outcome,
            "lineage": lineage,
            "targetedNodes": 0,
            "updatedNodes": 0,
            "readyNodes": 0,
        }
        message = "bundle built and verified; no edge nodes here (roll out with the operator)"
        return Draft("Available", "BundleBuilt", message, ready=True, fields=fields)

    def artifact_changed(self, res: Resource, status: dict[str, Any]) -> Draft | None:
        """Failed/ArtifactChanged when a ModelVersion's pinned artifact no longer verifies (a
        file or the manifest changed after evaluation), as serving would find it; else None."""
        pinned = status.get("artifact") or {}
        if not isinstance(res, ModelVersion) or not pinned.get("digest"):
            return None
        try:
            root = self.lake.root.rstrip("/") + "/"
            folder = str(pinned["uri"]).removeprefix(root).strip("/")
            verify_artifact(self.lake, folder, str(pinned["digest"]))
        except ArtifactChangedError as exc:
            return Draft(
                "Failed",
                ARTIFACT_CHANGED,
                f"never served: {exc}",
                fields={k: status[k] for k in ("artifact", "lineage", "evaluation") if k in status},
            )
        except (ArtifactIntegrityError, LakeError) as exc:
            return Draft("Failed", ARTIFACT_CHANGED, f"never served: {exc}")
        return None

    # ---- bookkeeping ----------------------------------------------------------------------
    def inputs_digest(self, res: Resource) -> str:
        """What this resource read last time: a rerun is needed when an input moved."""
        seen = []
        # A granted datasetRef may read another namespace's Dataset: its version counts too.
        elsewhere = {ref.name: ref.namespace for _, ref in dataset_refs(res) if ref.namespace}
        for kind, name in references(res):
            namespace = elsewhere.get(name) if kind == "Dataset" else None
            body = self.store.get(CR_VERSION, kind, namespace or res.metadata.namespace, name)
            body = body or {}
            status = body.get("status") or {}
            seen.append(
                [
                    kind,
                    name,
                    status.get("version"),
                    (status.get("artifact") or {}).get("digest"),
                    (status.get("table") or {}).get("digest"),
                    status.get("phase"),
                ]
            )
        if (
            isinstance(res, Dataset)
            and res.spec.source.from_
            and res.spec.source.from_.edge_deployment_ref
        ):
            # The logs move without any status changing: a new uploaded segment is a new input.
            name = res.spec.source.from_.edge_deployment_ref.name
            prefix = Lake.inference_logs_path(res.metadata.namespace or "default", name)
            seen.append(["inference-logs", name, list(self.lake.list_files(prefix))])
        return spec_digest(seen)

    def step(self, entry: Entry) -> Outcome:
        started = time.monotonic()
        previous = self.store.get(CR_VERSION, entry.kind, entry.namespace, entry.name) or {}
        if entry.resource is None or self._unchanged(entry.resource, previous):
            return self._step(entry, previous, started)
        # One run per resource at a time: an earlier run of it in another `neuraxis run`
        # process is stopped first (the cluster rule: never two writers of one table).
        lock = self.store.path(entry.kind, entry.namespace, entry.name).with_suffix(".run")
        claim = claim_run(lock, f"{entry.kind}/{entry.name} (pid {os.getpid()}, starting)")
        self._claim = claim
        try:
            # Read again: the run just stopped may have moved the state.
            previous = self.store.get(CR_VERSION, entry.kind, entry.namespace, entry.name) or {}
            return self._step(entry, previous, started)
        finally:
            self._claim = None
            claim.release()

    def _unchanged(self, res: Resource, previous: dict[str, Any]) -> bool:
        annotations = (previous.get("metadata") or {}).get("annotations") or {}
        return (
            not self.force
            and annotations.get(SPEC_ANNOTATION) == spec_digest(res.to_wire()["spec"])
            and annotations.get(INPUTS_ANNOTATION) == self.inputs_digest(res)
            and ((previous.get("status") or {}).get("phase") in DONE_PHASES)
        )

    def _step(self, entry: Entry, previous: dict[str, Any], started: float) -> Outcome:
        old_status = previous.get("status") or {}
        if entry.resource is None:
            draft = Draft("Failed", "InvalidSpec", entry.error or "invalid")
            body = {
                "apiVersion": CR_VERSION,
                "kind": entry.kind,
                "metadata": {"name": entry.name, "namespace": entry.namespace, "generation": 1},
                "spec": entry.raw.get("spec"),
            }
            return self._finish(entry, body, draft, old_status, started)
        res = entry.resource
        wire = res.to_wire()
        digest = spec_digest(wire["spec"])
        meta = previous.get("metadata") or {}
        annotations = dict(meta.get("annotations") or {})
        generation = int(meta.get("generation") or 0)
        if annotations.get(SPEC_ANNOTATION) != digest:
            generation += 1
        inputs = self.inputs_digest(res)
        unchanged = (
            annotations.get(SPEC_ANNOTATION) == digest
            and annotations.get(INPUTS_ANNOTATION) == inputs
        )
        grant_changed = _declare_grant(wire, annotations)
        if unchanged and not self.force and old_status.get("phase") in DONE_PHASES:
            if grant_changed:
                # Who may read it changed, not what it is: recorded, no rerun.
                self.store.save({**previous, "metadata": {**meta, "annotations": annotations}})
            changed = self.artifact_changed(res, old_status)
            if changed is not None:
                # Not rerun (nothing asked for it), but never left Approved on other files.
                return self._finish(entry, dict(previous), changed, old_status, started)
            return Outcome(
                entry.kind,
                entry.name,
                str(old_status["phase"]),
                "Unchanged",
                "skipped: spec and inputs unchanged",
                0.0,
                skipped=True,
                status=old_status,
            )
        res.metadata.generation = generation
        # A new uid for a resource the state does not know (never run, or its state deleted):
        # its runs never reuse an earlier resource's run ids, checkpoints or results.
        res.metadata.uid = meta.get("uid") or str(uuid.uuid4())
        annotations.update({SPEC_ANNOTATION: digest, INPUTS_ANNOTATION: inputs})
        body = {
            **wire,
            "metadata": {
                **wire["metadata"],
                "namespace": entry.namespace,
                "generation": generation,
                "uid": res.metadata.uid,
                "annotations": annotations,
            },
        }
        run_id = new_run_id(
            f"{entry.name}-{entry.kind.lower()}-{short_uid(res)}-g{generation}",
            old_status.get("runs") or [],
        )
        self.on_step(f"{entry.kind}/{entry.name}")
        claim = self._claim
        launched = False

        def on_workload_start(pid: int) -> None:
            # The run is visible (status.runs, and to a later `neuraxis run` that stops it)
            # from the moment its workload exists.
            nonlocal old_status, launched
            launched = True
            if claim is not None:
                claim.run_id = run_id
                claim.started(pid)
            running = Draft(
                RUNNING_PHASE[entry.kind],
                "Running",
                f"run {run_id}",
                run=(run_id, "Running"),
                superseded=[claim.superseded] if claim and claim.superseded else [],
            )
            old_status = status_from_draft(running, old_status, generation)
            self.store.save({**body, "status": old_status})

        self._on_workload_start = on_workload_start
        try:
            draft = self._run(res, run_id)
        except InputNotReadyError as exc:
            draft = Draft(
                "Pending",
                exc.reason,
                f"blocked: {exc.message}",
                conditions=[("InputsReady", False, exc.reason, exc.message)],
            )
            annotations.pop(INPUTS_ANNOTATION, None)
        except InvalidSpecError as exc:
            draft = Draft("Failed", exc.reason, exc.message)
        finally:
            self._on_workload_start = None
        if claim is not None and claim.was_superseded():
            # A later run of this resource stopped this one and records it (Superseded).
            message = f"run {run_id} was stopped by a later run of {entry.kind}/{entry.name}"
            return Outcome(
                entry.kind, entry.name, "Superseded", "Superseded", message, 0.0, status=old_status
            )
        if launched:
            draft.run = (run_id, _run_phase(draft))
        elif claim is not None and claim.superseded:
            draft.superseded = [claim.superseded]
        return self._finish(entry, body, draft, old_status, started)

    def _run(self, res: Resource, run_id: str) -> Draft:
        check_references(res, self.lake.root, self.store)
        if isinstance(res, Dataset):
            return self.run_dataset(res, run_id)
        if isinstance(res, TrainingJob):
            return self.run_training(res, run_id)
        if isinstance(res, ModelVersion):
            return self.run_model_version(res, run_id)
        assert isinstance(res, EdgeDeployment)
        return self.run_edge(res, run_id)

    def _finish(
        self, entry: Entry, body: dict[str, Any], draft: Draft, old: dict[str, Any], started: float
    ) -> Outcome:
        if old.get("evaluationHistory") and "evaluationHistory" not in draft.fields:
            # Backtests (`neuraxis backtest`) are history: a new evaluation keeps them.
            draft.fields["evaluationHistory"] = old["evaluationHistory"]
        status = status_from_draft(draft, old, body["metadata"].get("generation"))
        self.store.save({**body, "status": status})
        return Outcome(
            entry.kind,
            entry.name,
            draft.phase,
            draft.reason,
            draft.message,
            time.monotonic() - started,
            status=status,
        )

    def run(self, entries: list[Entry]) -> list[Outcome]:
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
        self._shared_spark = SharedSpark(self.work / "etl-server" / f"{stamp}.log")
        try:
            return self._run_all(entries)
        finally:
            self._shared_spark.close()
            self._shared_spark = None

    def _run_all(self, entries: list[Entry]) -> list[Outcome]:
        queue = order(entries)
        known = {(e.kind, e.name) for e in queue}
        outcomes = []
        while queue:
            entry = queue.pop(0)
            outcomes.append(self.step(entry))
            if self._shared_spark is not None and all(e.kind != "Dataset" for e in queue):
                self._shared_spark.close()  # its memory is the training's now
            # A TrainingJob that registered a ModelVersion nobody declared: evaluate it too.
            registered = outcomes[-1].status.get("modelVersion")
            if (
                entry.kind == "TrainingJob"
                and registered
                and ("ModelVersion", registered) not in known
            ):
                body = self.store.get(CR_VERSION, "ModelVersion", entry.namespace, registered)
                if body is not None:
                    mv = parse_resource(
                        {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")}
                    )
                    known.add(("ModelVersion", registered))
                    queue.insert(0, Entry("ModelVersion", registered, entry.namespace, mv))
        return outcomes


def key_figure(outcome: Outcome) -> str:
    """The one number worth showing per kind in the summary."""
    st = outcome.status
    if outcome.kind == "Dataset" and st.get("version") is not None:
        return (
            f"v{st['version']}, {st.get('rows')} rows, {st.get('quarantinedRows') or 0} quarantined"
        )
    if outcome.kind == "TrainingJob" and st.get("metrics"):
        metrics = st["metrics"]
        shown = {k: metrics[k] for k in ("accuracy", "val_loss", "rmse") if k in metrics}
        return ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
    if outcome.kind == "ModelVersion" and (st.get("evaluation") or {}).get("metrics"):
        metrics = st["evaluation"]["metrics"]
        shown = {k: metrics[k] for k in ("accuracy", "roc_auc", "rmse") if k in metrics}
        return ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
    if outcome.kind == "EdgeDeployment" and st.get("bundle"):
        return str(st["bundle"].get("digest", ""))[:19]
    return ""
