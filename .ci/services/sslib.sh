#!/usr/bin/env bash
# securesystemslib (PyPI), the DSSE verifier the signing tests use as a judge of
# cascade's attestation envelopes, and spdx-tools (PyPI), the judge of the SPDX SBOMs in
# release bundles (`pyspdxtools -i FILE` validates one).
#
#   .ci/services/sslib.sh     create the virtualenv if it is missing or holds another version
#
# Under the state directory (${CASCADE_SERVICES_DIR:-/tmp/cascade-services}):
#   sslib-venv/   virtualenv with securesystemslib[crypto]==1.6.0 (pyca/cryptography for
#                 Ed25519) and spdx-tools==0.8.5
# Tests run sslib-venv/bin/python; when it is missing they run this script first.
set -euo pipefail

state="${CASCADE_SERVICES_DIR:-/tmp/cascade-services}"
python="${CASCADE_PYTHON:-python3}"
version=1.6.0
spdx=0.8.5
venv="$state/sslib-venv"

if "$venv/bin/python" -c "import securesystemslib, sys; from importlib.metadata import version; sys.exit(securesystemslib.__version__ != '$version' or version('spdx-tools') != '$spdx')" 2>/dev/null; then
  exit 0
fi
mkdir -p "$state"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "securesystemslib[crypto]==$version" "spdx-tools==$spdx"
"$venv/bin/python" -c "import securesystemslib; print('sslib: securesystemslib', securesystemslib.__version__)"
