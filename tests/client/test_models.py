"""JSON to model objects with the defaults of spec §7."""

from __future__ import annotations

from hutch import (
    ExecutionResult,
    OutputChunk,
    ResourceSpec,
    ResourceStatus,
    RunConfig,
    SandboxTemplate,
    Snapshot,
    SnapshotTag,
    VolumeMountSpec,
)


def test_execution_result_defaults_and_success() -> None:
    """Missing /execute fields give "", "", -1; success means exit code 0."""
    result = ExecutionResult.from_dict({})
    assert (result.stdout, result.stderr, result.exit_code) == ("", "", -1)
    assert not result.success
    assert ExecutionResult("4\n", "", 0).success
    assert not ExecutionResult("", "", 1).success


def test_output_chunk_offset_defaults_to_zero() -> None:
    """An output chunk's offset defaults to 0."""
    chunk = OutputChunk("stdout", "hi")
    assert (chunk.stream, chunk.data, chunk.offset) == ("stdout", "hi", 0)


def test_resource_spec_defaults() -> None:
    """ResourceSpec defaults to 500m CPU, 512Mi memory, no storage limit."""
    assert ResourceSpec() == ResourceSpec(cpu="500m", memory="512Mi", storage=None)


def test_template_from_empty_object() -> None:
    """A template object with no fields reads as the documented defaults."""
    template = SandboxTemplate.from_dict({})
    assert template == SandboxTemplate(
        name="",
        image="unknown",
        resources=ResourceSpec(),
        volume_mounts=[],
        id=None,
        created_at=None,
        updated_at=None,
    )


def test_template_from_full_object() -> None:
    """Every template field is read, including partial resources and mounts."""
    template = SandboxTemplate.from_dict(
        {
            "name": "py",
            "image": "python:3.12-slim",
            "resources": {"cpu": "2", "storage": "1Gi"},
            "volume_mounts": [{"volume_name": "data", "mount_path": "/data"}, {}],
            "id": "t-1",
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-02T00:00:00Z",
        }
    )
    assert template.resources == ResourceSpec(cpu="2", memory="512Mi", storage="1Gi")
    assert template.volume_mounts == [VolumeMountSpec("data", "/data"), VolumeMountSpec("", "")]
    assert (template.name, template.image, template.id) == ("py", "python:3.12-slim", "t-1")
    assert template.created_at == "2024-01-01T00:00:00Z"


def test_template_tolerates_nulls() -> None:
    """Null resources or mounts count as absent instead of crashing."""
    template = SandboxTemplate.from_dict({"resources": None, "volume_mounts": None})
    assert template.resources == ResourceSpec()
    assert template.volume_mounts == []


def test_resource_status_defaults_to_provisioning() -> None:
    """A status answer without ``status`` reads as provisioning."""
    assert ResourceStatus.from_dict({}) == ResourceStatus("provisioning", None)
    assert ResourceStatus.from_dict({"status": "failed", "status_message": "pull"}) == (
        ResourceStatus("failed", "pull")
    )


def test_snapshot_models_default_every_field() -> None:
    """Empty or null snapshot JSON reads with defaults; run_config round-trips its set fields."""
    snap = Snapshot.from_dict({"tags": None, "run_config": None, "fs_capacity_bytes": None})
    assert (snap.id, snap.name, snap.status, snap.fs_capacity_bytes) == ("", "", "building", 0)
    assert (snap.tags, snap.run_config) == ([], None)
    assert Snapshot.from_dict({"run_config": {"user": "1000"}}).run_config == RunConfig("1000")
    assert RunConfig.from_dict({}) == RunConfig()
    assert RunConfig(work_dir="/w", env_vars={"A": "1"}).to_payload() == {
        "work_dir": "/w",
        "env_vars": {"A": "1"},
    }
    assert SnapshotTag.from_dict({}) == SnapshotTag("", "")
