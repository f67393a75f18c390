"""A judge cascade did not write: securesystemslib verifies a DSSE envelope.

    python dsse_verify.py ENVELOPE.json KEY.json

KEY.json is `cascade.pub.json` ({"keyid", "keytype", "scheme", "keyval"}), read with
securesystemslib's SSlibKey. Exit 0 and, on stdout, {"keyids": [...], "payloadType": ...,
"payload": <the body parsed as JSON>} when a signature by the key verifies; exit 1 with
the reason on stderr when none does.
"""
import json
import sys

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        envelope = Envelope.from_dict(json.load(f))
    with open(sys.argv[2], "rb") as f:
        key_dict = json.load(f)
    key = SSlibKey.from_dict(key_dict.pop("keyid"), key_dict)
    try:
        verified = envelope.verify([key], 1)
    except VerificationError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    json.dump(
        {
            "keyids": sorted(verified),
            "payloadType": envelope.payload_type,
            "payload": json.loads(envelope.payload),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
