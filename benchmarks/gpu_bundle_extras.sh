#!/usr/bin/env bash
# Adds to the GPU bundle (.gpu/site, built by ../shared/gpu/make_bundle.sh) the pure-Python and
# cp312 wheels the project imports that the bundle lacks: PyYAML (configs, run folders),
# cloudpickle (TensorDict memmaps) and lxml (dm_control's XML edits of the DMC variants).
# Run here, with network, from the project root, after make_bundle.sh:
#     bash ../shared/gpu/make_bundle.sh && bash benchmarks/gpu_bundle_extras.sh
set -euo pipefail
site=.gpu/site
[ -d "$site" ] || { echo "error: $site does not exist; run bash ../shared/gpu/make_bundle.sh first" >&2; exit 2; }
python3 -m pip install --quiet --no-deps --target "$site" --upgrade \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --only-binary=:all: pyyaml cloudpickle lxml
# Only lxml.etree is imported (dm_control's XML); its headers, sources, html and objectify
# modules would push the bundle past the 64 MiB a device call carries.
rm -rf "$site"/lxml/{includes,html,isoschematron} "$site"/lxml/objectify.*.so "$site"/lxml/*.{pyx,pxd,pxi,h}
echo "added to $site: $(ls "$site" | grep -i -E '^(yaml|cloudpickle|lxml)$' | tr '\n' ' ')"
