"""moto's server, as the test bed runs it.

Kept as a wrapper so that places where moto differs from AWS's documented
behaviour can be patched here, in one visible place, rather than worked around
in the operator (see shared/docs/testbed.md). No patches are needed yet.
"""

from moto.server import main

if __name__ == "__main__":
    main()
