"""The third-party versions bundled in the installed TorchServe front end (``make ts-dependencies``).

``python -m scripts.ts_dependencies [--jar PATH] [--json]`` reads ``ts/frontend/model-server.jar`` of the
installed ``ts`` package (a fat jar: every Java dependency is unpacked into it) and prints one
``name version`` line per library, read from the jar itself, for a vulnerability scanner:

- ``META-INF/io.netty.versions.properties`` (each Netty artifact, e.g. ``io.netty:netty-codec-http``),
- ``META-INF/DEPENDENCIES`` (maven coordinates, e.g. log4j),
- ``META-INF/maven/**/pom.properties`` and the manifests of the jar and of any jar shaded into it,
- ``META-INF/groovy-release-info.properties`` and ``META-INF/resources/webjars/<name>/<version>/``,
- version constants compiled into a few libraries' classes (grpc-java, gson, junit, picocli), since the fat
  jar dropped their pom files.

Libraries whose classes are there but whose version the jar does not record are listed after ``#`` (and
with ``"version": null`` in ``--json``): a scanner needs another source for them.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

NETTY_VERSIONS = "META-INF/io.netty.versions.properties"
DEPENDENCIES = "META-INF/DEPENDENCIES"
GROOVY_RELEASE = "META-INF/groovy-release-info.properties"
# "org.apache.logging.log4j:log4j-core:jar:2.17.1" in the maven-dependency-plugin's DEPENDENCIES text.
MAVEN_COORDINATE = re.compile(r"\b([\w.-]+):([\w.-]+):jar:([\w.-]+)")
WEBJAR = re.compile(r"^META-INF/resources/webjars/([^/]+)/(\d[^/]*)/")
VERSION = r"(\d+\.\d+(?:\.\d+)?(?:[.-][A-Za-z0-9]+)?)"
# Classes that carry their library's version as a string constant: (class, name, pattern around the version).
VERSION_CONSTANTS = (
    ("io/grpc/internal/GrpcUtil.class", "io.grpc:grpc-core", rb"\x00\x06" + VERSION.encode()),
    ("com/google/gson/internal/GsonBuildConfig.class", "com.google.code.gson:gson", VERSION.encode()),
    ("junit/runner/Version.class", "junit:junit", VERSION.encode()),
    ("picocli/CommandLine.class", "info.picocli:picocli", rb"\x00\x05" + VERSION.encode()),
)
# Package folders of libraries a scanner should know about even when the jar records no version for them.
KNOWN_PACKAGES = {
    "com/google/protobuf/": "com.google.protobuf:protobuf-java",
    "com/google/common/": "com.google.guava:guava",
    "org/apache/commons/io/": "commons-io:commons-io",
    "org/apache/commons/cli/": "commons-cli:commons-cli",
    "org/apache/commons/compress/": "org.apache.commons:commons-compress",
    "org/yaml/snakeyaml/": "org.yaml:snakeyaml",
    "org/testng/": "org.testng:testng",
    "org/junit/jupiter/": "org.junit.jupiter:junit-jupiter",
    "org/junit/platform/": "org.junit.platform:junit-platform",
    "io/prometheus/client/": "io.prometheus:simpleclient",
    "com/lmax/disruptor/": "com.lmax:disruptor",
    "com/github/javaparser/": "com.github.javaparser:javaparser-core",
    "com/beust/jcommander/": "com.beust:jcommander",
    "org/apache/tools/ant/": "org.apache.ant:ant",
    "org/slf4j/": "org.slf4j:slf4j-api",
}


class JarError(RuntimeError):
    """The front end's jar is missing or unreadable."""


@dataclass(frozen=True)
class Bundled:
    """One library found in the jar.

    Args:
        name: maven ``group:artifact`` where the jar says it (else the library's usual name).
        version: its version; None when the jar holds its classes but records no version.
        source: the entry of the jar the version was read from (or the package folder found).
    """

    name: str
    version: str | None
    source: str


def installed_jar() -> Path:
    """``ts/frontend/model-server.jar`` of the installed ``ts`` package (what ``torchserve`` runs)."""
    try:
        import ts
    except ImportError as exc:
        raise JarError("the ts package (TorchServe) is not installed: `make setup`") from exc
    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip().replace("\\:", ":") for key, value in pairs}


def _manifest(text: str) -> dict[str, str]:
    """A MANIFEST.MF's main attributes (continuation lines joined)."""
    joined = re.sub(r"\r?\n ", "", text)
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in joined.splitlines()) if value}


def _from_archive(archive: zipfile.ZipFile, prefix: str = "") -> list[Bundled]:
    """What ``archive`` records about its contents; ``prefix`` names the jar it is shaded in."""
    names = archive.namelist()
    found: list[Bundled] = []
    if NETTY_VERSIONS in names:
        props = _properties(archive.read(NETTY_VERSIONS).decode("utf-8", "replace"))
        found += [Bundled(f"io.netty:{key[:-len('.version')]}", value, prefix + NETTY_VERSIONS)
                  for key, value in props.items() if key.endswith(".version")]
    if DEPENDENCIES in names:
        text = archive.read(DEPENDENCIES).decode("utf-8", "replace")
        found += [Bundled(f"{group}:{artifact}", version, prefix + DEPENDENCIES)
                  for group, artifact, version in MAVEN_COORDINATE.findall(text)]
    if GROOVY_RELEASE in names:
        version = _properties(archive.read(GROOVY_RELEASE).decode("utf-8", "replace")).get("ImplementationVersion")
        if version:
            found.append(Bundled("org.codehaus.groovy:groovy", version, prefix + GROOVY_RELEASE))
    for name in names:
        if name.startswith("META-INF/maven/") and name.endswith("/pom.properties"):
            props = _properties(archive.read(name).decode("utf-8", "replace"))
            if {"groupId", "artifactId", "version"} <= props.keys():
                found.append(Bundled(f"{props['groupId']}:{props['artifactId']}", props["version"], prefix + name))
        elif webjar := WEBJAR.match(name):
            found.append(Bundled(f"org.webjars:{webjar[1]}", webjar[2], prefix + webjar[0]))
        elif name.endswith("META-INF/MANIFEST.MF"):
            attributes = _manifest(archive.read(name).decode("utf-8", "replace"))
            title = attributes.get("Bundle-SymbolicName", attributes.get("Implementation-Title", ""))
            version = attributes.get("Bundle-Version", attributes.get("Implementation-Version"))
            if title and version:
                found.append(Bundled(title.split(";")[0], version, prefix + name))
        elif name.endswith(".jar"):  # a jar shaded in whole: read its own metadata
            with zipfile.ZipFile(io.BytesIO(archive.read(name))) as inner:
                found += _from_archive(inner, prefix=f"{prefix}{name}!/")
    for entry, library, pattern in VERSION_CONSTANTS:
        if entry in names and (match := re.search(pattern, archive.read(entry))):
            found.append(Bundled(library, match[1].decode(), prefix + entry))
    return found


def bundled_versions(jar: Path) -> list[Bundled]:
    """Every library the jar records a version for, then those it holds without one; one entry per name.

    Args:
        jar: the front end's fat jar.

    Raises:
        JarError: the jar cannot be read.
    """
    try:
        with zipfile.ZipFile(jar) as archive:
            found = _from_archive(archive)
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise JarError(f"cannot read {jar}: {exc}") from exc
    unique = {item.name: item for item in reversed(found)}  # the first source of a name wins
    for folder, library in KNOWN_PACKAGES.items():
        if library not in unique and any(name.startswith(folder) for name in names):
            unique[library] = Bundled(library, None, folder)
    return sorted(unique.values(), key=lambda item: (item.version is None, item.name))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.ts_dependencies", description=__doc__.splitlines()[0])
    parser.add_argument("--jar", type=Path, default=None,
                        help="the front end's jar (default: ts/frontend/model-server.jar of the installed ts)")
    parser.add_argument("--json", action="store_true", help="a JSON list of {name, version, source}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        jar = args.jar or installed_jar()
        libraries = bundled_versions(jar)
    except JarError as exc:
        print(f"ts-dependencies: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(item) for item in libraries], indent=1))
        return 0
    print(f"# {jar}")
    for item in libraries:
        if item.version is not None:
            print(f"{item.name} {item.version}")
    unversioned = [item.name for item in libraries if item.version is None]
    if unversioned:
        print(f"# bundled, no version recorded in the jar: {', '.join(unversioned)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
