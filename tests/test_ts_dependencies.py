"""``make ts-dependencies``: the versions bundled in the installed TorchServe front end, read from its jar."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from scripts.ts_dependencies import bundled_versions, installed_jar
from tests.conftest import run_module


def test_the_installed_jar_bundles_netty_4_1_53_and_a_log4j():
    versions = {item.name: item.version for item in bundled_versions(installed_jar())}
    assert versions["io.netty:netty-codec-http"] == "4.1.53.Final"
    assert versions["org.apache.logging.log4j:log4j-core"].startswith("2.")


def test_the_command_prints_name_version_lines_and_json():
    plain = run_module("scripts.ts_dependencies")
    assert plain.returncode == 0, plain.stderr
    lines = [line for line in plain.stdout.splitlines() if not line.startswith("#")]
    assert "io.netty:netty-codec-http 4.1.53.Final" in lines
    assert all(len(line.split()) == 2 for line in lines)
    listed = {item["name"]: item for item in json.loads(run_module("scripts.ts_dependencies", "--json").stdout)}
    assert listed["io.netty:netty-handler"]["version"] == "4.1.53.Final"
    assert listed["io.netty:netty-handler"]["source"] == "META-INF/io.netty.versions.properties"


def test_a_shaded_jars_pom_properties_and_manifest_are_read(tmp_path: Path):
    inner, outer = tmp_path / "inner.jar", tmp_path / "outer.jar"
    with zipfile.ZipFile(inner, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nBundle-SymbolicName: com.example.lib\n"
                                             "Bundle-Version: 1.2.3\n")
    with zipfile.ZipFile(outer, "w") as jar:
        jar.write(inner, "lib/inner.jar")
        jar.writestr("META-INF/maven/com.example/thing/pom.properties",
                     "groupId=com.example\nartifactId=thing\nversion=4.5\n")
        jar.writestr("org/yaml/snakeyaml/Yaml.class", b"")
    found = {item.name: item.version for item in bundled_versions(outer)}
    assert found == {"com.example.lib": "1.2.3", "com.example:thing": "4.5", "org.yaml:snakeyaml": None}


def test_a_missing_jar_is_one_line(tmp_path: Path):
    done = run_module("scripts.ts_dependencies", "--jar", tmp_path / "none.jar")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "cannot read" in done.stderr
