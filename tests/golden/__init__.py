"""The golden vectors' files and the scripts that write them."""

import json


def write_or_check(out, doc, argv):
    """The ``main`` of a script writing golden vectors: ``doc`` as JSON into
    ``out``, or with ``--check`` in ``argv`` only compared with it (exit
    status 1, saying so, when the file is out of date)."""
    text = json.dumps(doc, indent=1, ensure_ascii=True) + "\n"
    if "--check" in argv:
        with open(out) as f:
            if f.read() != text:
                print("%s is out of date" % out)
                return 1
        return 0
    with open(out, "w") as f:
        f.write(text)
    print("wrote %s" % out)
    return 0
