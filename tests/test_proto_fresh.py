"""The committed report API stubs are what grpc_tools generates from mfs/proto/report.proto."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is not installed")
    (tmp_path / "mfs" / "proto").mkdir(parents=True)
    shutil.copy(ROOT / "mfs" / "proto" / "report.proto", tmp_path / "mfs" / "proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.",
                    "mfs/proto/report.proto"], cwd=tmp_path, check=True)
    for name in ("report_pb2.py", "report_pb2_grpc.py"):
        fresh = (tmp_path / "mfs" / "proto" / name).read_text()
        assert fresh == (ROOT / "mfs" / "proto" / name).read_text(), f"{name} is stale: run `make proto`"
