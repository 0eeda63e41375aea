"""Zips a Lambda custom-runtime binary as `bootstrap` (mode 0755), stripped
of timestamps so the same binary gives the same zip:

    python3 hack/lambda_zip.py target/release/bootstrap target/lambda/rotator.zip
"""

import os
import sys
import zipfile


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(src, "rb") as f, zipfile.ZipFile(dst + ".tmp", "w") as z:
        z.writestr(info, f.read(), compresslevel=9)
    os.replace(dst + ".tmp", dst)
    print(f"{dst}: {os.path.getsize(dst)} bytes")


if __name__ == "__main__":
    main()
