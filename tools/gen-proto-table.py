#!/usr/bin/env python3
"""Generates crates/api/src/proto_table.rs: the protobuf field table of every
Kubernetes message reachable from the kinds skiff serves.

Sources: the prost bindings of the `k8s-pb` crate (kube-rs's
generated Kubernetes protobuf bindings). Each message there is a
`pub struct` whose fields carry `#[prost(<type>, optional|repeated, tag = "N")]`
or `#[prost(btree_map = "string, <type>", tag = "N")]`; the field's Rust
type names the nested message. The roots are the kinds listed in
`crates/api/src/openapi.rs` (`kinds! { "group" "v1" "Kind" => k::…; }`)
plus the request-only messages in EXTRA_ROOTS.

prost renames messages to Rust's UpperCamelCase (`HTTPGetAction` becomes
`HttpGetAction`, `PodIP` `PodIp`), so message names are put back to
Kubernetes' definition names (`io.k8s.api.core.v1.HTTPGetAction`, the names
`skiff_api::openapi` uses) from the `// Generated from definition …` lines
of the `k8s-openapi` crate the workspace already depends on.

Re-run after changing the kinds in openapi.rs or bumping k8s-pb:

    (mkdir -p /tmp/k8spb && cd /tmp/k8spb && cargo init -q --name k8spb 2>/dev/null; \
     cargo add -q k8s-pb@0.9 && cargo fetch -q)
    python3 tools/gen-proto-table.py            # finds ~/.cargo/registry/src/*/k8s-pb-0.9.0
    python3 tools/gen-proto-table.py --src DIR  # or point at k8s-pb's src/
    # (k8s-openapi's sources are found the same way; `cargo fetch` in the
    # workspace puts them there, or pass --openapi-src)

The output is written in place and is not rustfmt'd (lib.rs marks the
module `#[rustfmt::skip]`): one line per field keeps diffs readable.
"""

import argparse
import glob
import os
import re
import sys

K8S_PB_VERSION = "0.9.0"
K8S_OPENAPI_SRC = "k8s-openapi-0.29.*/src/v1_33"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "crates/api/src/proto_table.rs")
OPENAPI_RS = os.path.join(REPO, "crates/api/src/openapi.rs")

# Bodies that are not stored kinds but arrive as requests.
EXTRA_ROOTS = [
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
]

# Top-level k8s-pb module → the prefix of Kubernetes' definition names.
PREFIXES = {
    "api": "io.k8s.api",
    "apimachinery": "io.k8s.apimachinery",
    "apiextensions_apiserver": "io.k8s.apiextensions-apiserver",
    "kube_aggregator": "io.k8s.kube-aggregator",
    "metrics": "io.k8s.metrics",
}

SCALARS = {
    "string": "Str",
    "bool": "Bool",
    "int32": "I32",
    "int64": "I64",
    "double": "F64",
    "bytes": "Bytes",
}


def package_of(module):
    """['api', 'apps', 'v1'] → 'io.k8s.api.apps.v1'."""
    head, *rest = module
    return ".".join([PREFIXES.get(head, "io.k8s." + head)] + rest)


def resolve(module, rust_path):
    """Resolves a Rust type path relative to `module` to a message name."""
    segs = [s for s in rust_path.split("::") if s]
    here = list(module)
    while segs and segs[0] == "super":
        segs.pop(0)
        here.pop()
    *mods, name = segs
    return package_of(here + mods) + "." + name


def strip_generics(ty):
    """The innermost message type of a field's Rust type."""
    ty = re.sub(r"\s+", "", ty)
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<",
                    "::prost::alloc::boxed::Box<"):
        while ty.startswith(wrapper):
            ty = ty[len(wrapper):-1]
    m = re.match(r"::prost::alloc::collections::BTreeMap<[^,]+,(.*?),?>$", ty)
    if m:
        ty = m.group(1)
    return ty


FIELD_ATTR = re.compile(r'#\[prost\((.*)\)\]')
STRUCT = re.compile(r"^pub struct (\w+) \{(\})?")


def parse_file(path, module, messages):
    lines = open(path, encoding="utf-8").read().splitlines()
    i, current = 0, None
    while i < len(lines):
        line = lines[i].strip()
        m = STRUCT.match(lines[i])
        if m:
            current = package_of(module) + "." + m.group(1)
            messages[current] = []
            if m.group(2):
                current = None
        elif lines[i].startswith("}"):
            current = None
        elif current and (a := FIELD_ATTR.match(line)):
            attr = a.group(1)
            decl = ""
            i += 1
            while True:
                decl += " " + lines[i].strip()
                if decl.rstrip().endswith(",") and decl.count("<") == decl.count(">"):
                    break
                i += 1
            dm = re.match(r"\s*pub (?:r#)?(\w+):\s*(.*),$", decl)
            if not dm:
                sys.exit(f"{path}:{i + 1}: cannot parse field {decl!r}")
            name, rust_ty = dm.group(1), dm.group(2)
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            parts = [p.strip() for p in attr.split(",")]
            if attr.startswith(("btree_map", "map")):
                value = re.search(r'map = "string, (\w+)"', attr).group(1)
                label = "Map"
            else:
                value = parts[0].split(" ")[0]
                label = "Repeated" if "repeated" in parts else "Optional"
            if value == "message":
                ty = 'Msg("%s")' % resolve(module, strip_generics(rust_ty))
            elif value in SCALARS:
                ty = SCALARS[value]
            else:
                sys.exit(f"{path}:{i + 1}: unknown prost type {value!r}")
            messages[current].append((tag, name, ty, label))
        i += 1


def definition_names(openapi_src):
    """Kubernetes' definition names, by lowercased name."""
    names = {}
    for path in glob.glob(os.path.join(openapi_src, "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        m = re.match(r"// Generated from definition (\S+)", first)
        if m:
            names[m.group(1).lower()] = m.group(1)
    if not names:
        sys.exit(f"{openapi_src}: no k8s-openapi definitions found")
    return names


def find_src(arg, pattern, what):
    if arg:
        return arg
    found = sorted(glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/{pattern}")))
    if not found:
        sys.exit(f"{what} sources not found; cargo fetch them (see --help)")
    return found[-1]


def roots():
    text = open(OPENAPI_RS, encoding="utf-8").read()
    kinds = re.findall(r'"[^"]*" "[^"]*" "[^"]*" => k::(\w+)::(\w+)::(\w+);', text)
    if not kinds:
        sys.exit(f"{OPENAPI_RS}: no kinds! entries found")
    return ["io.k8s.api.%s.%s.%s" % k for k in kinds] + EXTRA_ROOTS


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="k8s-pb's src/ directory")
    ap.add_argument("--openapi-src", help="k8s-openapi's src/v1_NN directory")
    args = ap.parse_args()
    src = find_src(args.src, f"k8s-pb-{K8S_PB_VERSION}/src", "k8s-pb")
    canonical = definition_names(find_src(args.openapi_src, K8S_OPENAPI_SRC, "k8s-openapi"))

    messages = {}
    for path in sorted(glob.glob(os.path.join(src, "**", "mod.rs"), recursive=True)):
        module = os.path.relpath(os.path.dirname(path), src).split(os.sep)
        if module == ["."]:
            continue
        parse_file(path, module, messages)

    # prost's names → Kubernetes' names, in the messages and their fields.
    rename = {n: canonical.get(n.lower(), n) for n in messages}
    messages = {
        rename[n]: [(t, f, re.sub(r'Msg\("([^"]+)"\)',
                                  lambda m: 'Msg("%s")' % rename.get(m.group(1), m.group(1)), ty), l)
                    for t, f, ty, l in fields]
        for n, fields in messages.items()
    }

    keep, todo = set(), roots()
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        if name not in messages:
            sys.exit(f"message {name} not found in k8s-pb")
        keep.add(name)
        for _, _, ty, _ in messages[name]:
            if ty.startswith("Msg("):
                todo.append(ty[5:-2])

    out = [
        "// @generated by tools/gen-proto-table.py from k8s-pb %s; do not edit." % K8S_PB_VERSION,
        "// Re-run `python3 tools/gen-proto-table.py` (see its header) after changing",
        "// the kinds in openapi.rs or bumping k8s-pb.",
        "//",
        "// Every protobuf message reachable from the served kinds, sorted by name:",
        "// (tag, k8s-pb's Rust field name, type, label).",
        "",
        "use crate::protobuf::table::{Field, Label::*, Message, Type::*};",
        "",
        "const fn f(tag: u32, rust_name: &'static str, ty: crate::protobuf::table::Type, label: crate::protobuf::table::Label) -> Field {",
        "    Field { tag, rust_name, ty, label }",
        "}",
        "",
        "pub(crate) static MESSAGES: &[Message] = &[",
    ]
    for name in sorted(keep):
        fields = sorted(messages[name])
        if not fields:
            out.append('    Message { name: "%s", fields: &[] },' % name)
            continue
        out.append('    Message { name: "%s", fields: &[' % name)
        for tag, fname, ty, label in fields:
            out.append('        f(%d, "%s", %s, %s),' % (tag, fname, ty, label))
        out.append("    ] },")
    out.append("];")
    with open(OUT, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")
    print(f"wrote {OUT}: {len(keep)} messages, "
          f"{sum(len(messages[n]) for n in keep)} fields", file=sys.stderr)


if __name__ == "__main__":
    main()
