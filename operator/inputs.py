"""What a resource waits for, decided the same way in a cluster and under `neuraxis run`:
the inputs are read through a `Store` (the API server, or the local state folder)."""

from __future__ import annotations

from typing import Any, Protocol

from neuraxis import API_GROUP, API_VERSION
from neuraxis.crds import Dataset, ModelVersion, Resource, TrainingJob
from neuraxis.crds.common import DatasetRef
from neuraxis.crds.edgedeployment import EdgeDeployment
from neuraxis.operator.builders.federation import ResolvedSite
from neuraxis.operator.builders.training import ResolvedDataset
from neuraxis.operator.errors import InputNotReadyError, InvalidSpecError
from neuraxis.references import REFERENCE_NOT_PERMITTED, grants, lake_owner, not_permitted
from neuraxis.resources import parse_resource

CR_VERSION = f"{API_GROUP}/{API_VERSION}"
Obj = dict[str, Any]


class Store(Protocol):
    """Read and create Neuraxis objects (bodies with spec and status)."""

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None: ...

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None = None,
    ) -> list[Obj]: ...

    def create(self, manifest: Obj) -> Obj | None: ...


def ns_of(res: Resource) -> str:
    return res.metadata.namespace or "default"


def status_of(body: Obj) -> Obj:
    return dict(body.get("status") or {})


def resolve_dataset(tj: TrainingJob, store: Store) -> ResolvedDataset:
    """The Dataset version a TrainingJob reads: Ready, quality gate passed, pinned."""
    return resolve_dataset_ref(tj.spec.central_dataset(), ns_of(tj), store)


def resolve_upstream(ds: Dataset, store: Store) -> ResolvedDataset | None:
    """For a derived Dataset, the upstream version it reads (same rules as training). A
    Dataset over an EdgeDeployment's logs waits only for that EdgeDeployment to exist: the run
    ingests what its agents uploaded (the table is `Lake.edge_logs_table_path`)."""
    source = ds.spec.source.from_
    if source is None:
        return None
    if source.edge_deployment_ref is not None:
        name = source.edge_deployment_ref.name
        if store.get(CR_VERSION, "EdgeDeployment", ns_of(ds), name) is None:
            raise InputNotReadyError(
                "EdgeDeploymentNotFound", f"EdgeDeployment {name} does not exist"
            )
        return None
    assert source.dataset_ref is not None
    return resolve_dataset_ref(source.dataset_ref, ns_of(ds), store)


def pin_upstream(ds: Dataset, upstream: ResolvedDataset | None) -> Dataset:
    """The Dataset with its upstream reference pinned to the version resolved now (lineage)."""
    if upstream is None or ds.spec.source.from_ is None:
        return ds
    out = ds.model_copy(deep=True)
    assert out.spec.source.from_ is not None and out.spec.source.from_.dataset_ref is not None
    out.spec.source.from_.dataset_ref.version = upstream.version
    return out


def dataset_refs(res: Resource) -> list[tuple[str, DatasetRef]]:
    """Every datasetRef of a resource, with its field path."""
    if isinstance(res, Dataset):
        src = res.spec.source.from_
        ref = src.dataset_ref if src else None
        return [("spec.source.from.datasetRef", ref)] if ref else []
    if isinstance(res, TrainingJob):
        if res.spec.federation is not None:
            sites = res.spec.federation.sites
            return [
                (f"spec.federation.sites[{i}].datasetRef", s.dataset_ref)
                for i, s in enumerate(sites)
            ]
        return [("spec.datasetRef", res.spec.dataset_ref)] if res.spec.dataset_ref else []
    if isinstance(res, ModelVersion) and res.spec.evaluation is not None:
        ref = res.spec.evaluation.dataset_ref
        return [("spec.evaluation.datasetRef", ref)] if ref else []
    return []


def source_uris(res: Resource) -> list[tuple[str, str]]:
    """Every URI a resource reads from, with its field path."""
    uris: list[tuple[str, str]] = []
    if isinstance(res, Dataset | ModelVersion) and res.spec.source.uri is not None:
        uris.append(("spec.source.uri", res.spec.source.uri))
    if isinstance(res, Dataset) and res.spec.transform is not None:
        for i, item in enumerate(res.spec.transform.inputs):
            uris.append((f"spec.transform.inputs[{i}].uri", item.uri))
    return uris


def _uri_granted(
    owner_kind: str, owner_name: str | None, owner_ns: str, uri: str, namespace: str, store: Store
) -> bool:
    if owner_name is not None:
        body = store.get(CR_VERSION, owner_kind, owner_ns, owner_name) or {}
        return grants((body.get("metadata") or {}).get("annotations"), namespace)
    # A model folder: granted by a ModelVersion there whose evaluated artifact it is.
    wanted = uri.rstrip("/")
    for body in store.list(CR_VERSION, owner_kind, owner_ns):
        artifact = str((status_of(body).get("artifact") or {}).get("uri") or "").rstrip("/")
        if artifact == wanted and grants(
            (body.get("metadata") or {}).get("annotations"), namespace
        ):
            return True
    return False


def check_references(res: Resource, lake_root: str, store: Store) -> None:
    """InputNotReadyError ReferenceNotPermitted for the first reference into another namespace
    that the referenced object does not grant (neuraxis/references.py). Not permanent: adding
    the grant lets the next reconcile through."""
    namespace = ns_of(res)
    for field, ref in dataset_refs(res):
        other = ref.namespace or namespace
        if other == namespace:
            continue
        body = store.get(CR_VERSION, "Dataset", other, ref.name)
        # A missing Dataset is refused too: whether it exists elsewhere is not ours to learn.
        if body is None or not grants((body.get("metadata") or {}).get("annotations"), namespace):
            target = f"Dataset {ref.name}"
            raise InputNotReadyError(
                REFERENCE_NOT_PERMITTED, not_permitted(field, namespace, target, other)
            )
    for field, uri in source_uris(res):
        owner = lake_owner(uri, lake_root)
        if owner is None or owner.namespace == namespace:
            continue
        granted = owner.kind is not None and _uri_granted(
            owner.kind, owner.name, owner.namespace, uri, namespace, store
        )
        if not granted:
            target = f"{uri} (lake area {owner.area})"
            raise InputNotReadyError(
                REFERENCE_NOT_PERMITTED, not_permitted(field, namespace, target, owner.namespace)
            )


def resolve_dataset_ref(ref: DatasetRef, namespace: str, store: Store) -> ResolvedDataset:
    """The version `ref` names; `namespace` is the referring object's, used unless the ref
    names its own (check_references has allowed that by then)."""
    namespace = ref.namespace or namespace
    body = store.get(CR_VERSION, "Dataset", namespace, ref.name)
    if body is None:
        raise InputNotReadyError("DatasetNotFound", f"Dataset {ref.name} does not exist")
    status = status_of(body)
    if status.get("phase") != "Ready":
        raise InputNotReadyError(
            "WaitingForDataset", f"Dataset {ref.name} is {status.get('phase', 'Pending')}"
        )
    if status.get("qualityPassed") is False:
        raise InputNotReadyError(
            "DatasetQualityFailed", f"Dataset {ref.name} did not pass its quality gate"
        )
    latest = status.get("version")
    version = ref.version if ref.version is not None else latest
    if version is None or (latest is not None and version > latest):
        raise InputNotReadyError(
            "WaitingForDataset",
            f"Dataset {ref.name} has no version {version} yet (latest {latest})",
        )
    table = status.get("table") or {}
    # The status's digest is the latest version's; an older pinned version's digest is in its
    # Delta commit, which the training run reads and reports.
    digest = table.get("digest") if version == latest else None
    return ResolvedDataset(ref.name, int(version), table.get("uri"), digest)


def registered_name(tj: TrainingJob) -> str | None:
    reg = tj.spec.register_
    if reg is None:
        return None
    return reg.version_name or f"{reg.model}-{tj.metadata.name}"


def ensure_registered(tj: TrainingJob, status: Obj, store: Store) -> str | None:
    """Create the ModelVersion a successful job registers. It has no owner: it must outlive
    the job. One declared in Git under that name is left alone if it points at this job."""
    name = registered_name(tj)
    reg = tj.spec.register_
    if name is None or reg is None:
        return None
    existing = store.get(CR_VERSION, "ModelVersion", ns_of(tj), name)
    if existing is not None:
        source = (existing.get("spec") or {}).get("source") or {}
        if (source.get("trainingJobRef") or {}).get("name") != tj.metadata.name:
            raise InvalidSpecError(
                "VersionNameTaken", f"ModelVersion {name} exists and does not come from this job"
            )
        return name
    lineage = status.get("lineage") or {}
    store.create(
        {
            "apiVersion": CR_VERSION,
            "kind": "ModelVersion",
            "metadata": {
                "name": name,
                "namespace": ns_of(tj),
                "labels": {
                    "neuraxis.dev/model": reg.model,
                    "neuraxis.dev/trainingjob": tj.metadata.name,
                },
                "annotations": {
                    "neuraxis.dev/dataset-version": str(lineage.get("datasetVersion", ""))
                },
            },
            "spec": {"model": reg.model, "source": {"trainingJobRef": {"name": tj.metadata.name}}},
        }
    )
    return name


def pinned_artifact(mv: ModelVersion, status: Obj) -> tuple[str, str] | None:
    """The (uri, digest) this ModelVersion pinned when it was evaluated for its generation,
    else None. Once pinned it is what serving and bundles use (and verify), not whatever the
    TrainingJob produced since."""
    artifact = status.get("artifact") or {}
    evaluated = (status.get("evaluation") or {}).get("passed") is not None
    if (
        evaluated
        and status.get("observedGeneration") == mv.metadata.generation
        and artifact.get("uri")
        and artifact.get("digest")
    ):
        return str(artifact["uri"]), str(artifact["digest"])
    return None


def artifact_to_evaluate(mv: ModelVersion, store: Store) -> tuple[str, str | None, Obj]:
    """The artifact URI, the digest it must have (spec.source.digest, or the one its training
    run reported) and the lineage of the model's source."""
    source = mv.spec.source
    if source.uri is not None:
        return source.uri, source.digest, {"modelVersion": mv.metadata.name}
    uri, lineage = resolve_artifact(mv, store)
    assert source.training_job_ref is not None
    body = store.get(CR_VERSION, "TrainingJob", ns_of(mv), source.training_job_ref.name) or {}
    digest = (status_of(body).get("artifact") or {}).get("digest")
    return uri, str(digest) if digest else None, lineage


def resolve_artifact(mv: ModelVersion, store: Store) -> tuple[str, Obj]:
    """The artifact URI and the lineage of the model's source."""
    source = mv.spec.source
    if source.uri is not None:
        return source.uri, {"modelVersion": mv.metadata.name}
    assert source.training_job_ref is not None
    name = source.training_job_ref.name
    body = store.get(CR_VERSION, "TrainingJob", ns_of(mv), name)
    if body is None:
        raise InputNotReadyError("TrainingJobNotFound", f"TrainingJob {name} does not exist")
    status = status_of(body)
    if status.get("phase") == "Failed":
        raise InputNotReadyError("TrainingJobFailed", f"TrainingJob {name} failed")
    artifact = status.get("artifact") or {}
    if status.get("phase") != "Succeeded" or not artifact.get("uri"):
        raise InputNotReadyError(
            "WaitingForTrainingJob", f"TrainingJob {name} has not succeeded yet"
        )
    lineage = {**(status.get("lineage") or {}), "modelVersion": mv.metadata.name}
    return str(artifact["uri"]), lineage


def find_stable(mv: ModelVersion, store: Store) -> ModelVersion | None:
    serving = mv.spec.serving
    if serving is None or serving.canary is None:
        return None
    ref = serving.canary.stable_ref
    if ref is not None:
        body = store.get(CR_VERSION, "ModelVersion", ns_of(mv), ref.name)
        if body is None:
            raise InputNotReadyError(
                "StableVersionNotFound", f"ModelVersion {ref.name} does not exist"
            )
        stable = parse_resource(body)
        assert isinstance(stable, ModelVersion)
        return stable
    for body in store.list(CR_VERSION, "ModelVersion", ns_of(mv)):
        spec = body.get("spec") or {}
        if (
            spec.get("model") == mv.spec.model
            and spec.get("stage") == "production"
            and body["metadata"]["name"] != mv.metadata.name
        ):
            stable = parse_resource(body)
            assert isinstance(stable, ModelVersion)
            return stable
    return None


def approved_artifact_digest(ed: EdgeDeployment, store: Store) -> str | None:
    """The artifact digest the ModelVersion rolled out pinned (the bundle verifies it)."""
    body = store.get(CR_VERSION, "ModelVersion", ns_of(ed), ed.spec.model_version_ref.name) or {}
    digest = (status_of(body).get("artifact") or {}).get("digest")
    return str(digest) if digest else None


def approved_evaluation_dataset(ed: EdgeDeployment, store: Store) -> DatasetRef | None:
    """The Dataset the rolled-out ModelVersion was judged on, when it names one
    (spec.evaluation.datasetRef): the bundle weighs int8 against fp32 on the same rows."""
    body = store.get(CR_VERSION, "ModelVersion", ns_of(ed), ed.spec.model_version_ref.name) or {}
    ref = ((body.get("spec") or {}).get("evaluation") or {}).get("datasetRef")
    return DatasetRef.model_validate(ref) if ref else None


def resolve_approved_model(ed: EdgeDeployment, store: Store) -> tuple[str, str, Obj]:
    """The model name, artifact URI and lineage of the Approved ModelVersion to roll out."""
    ref = ed.spec.model_version_ref.name
    body = store.get(CR_VERSION, "ModelVersion", ns_of(ed), ref)
    if body is None:
        raise InputNotReadyError("ModelVersionNotFound", f"ModelVersion {ref} does not exist")
    status = status_of(body)
    if status.get("phase") == "Rejected":
        raise InputNotReadyError(
            "ModelVersionRejected", f"ModelVersion {ref} was rejected by its gates"
        )
    if status.get("phase") not in ("Approved", "Serving"):
        raise InputNotReadyError(
            "WaitingForModelVersion", f"ModelVersion {ref} is not Approved yet"
        )
    artifact_uri = str((status.get("artifact") or {}).get("uri"))
    model = str((body.get("spec") or {}).get("model"))
    return model, artifact_uri, {**(status.get("lineage") or {}), "modelVersion": ref}


def resolve_sites(tj: TrainingJob, store: Store) -> list[ResolvedSite]:
    """A federated job's sites, each with its Dataset resolved as a training job's is. Every
    site must be ready: the one waiting error names each site that is not (and why)."""
    assert tj.spec.federation is not None
    sites: list[ResolvedSite] = []
    waiting: list[InputNotReadyError] = []
    for site in tj.spec.federation.sites:
        try:
            dataset = resolve_dataset_ref(site.dataset_ref, ns_of(tj), store)
        except InputNotReadyError as exc:
            waiting.append(InputNotReadyError(exc.reason, f"site {site.name}: {exc.message}"))
            continue
        sites.append(ResolvedSite(site.name, dataset, site.selector()))
    if waiting:
        raise InputNotReadyError(waiting[0].reason, "; ".join(w.message for w in waiting))
    return sites
