# Sourced by gpu_tests.sh and gpu_check.sh (with $root set to the repository root): the
# wheels a GPU machine's image may lack, fetched beforehand where PyPI is reachable and
# carried in .whl/ (kept out of git by .gitignore), then installed into /tmp/site.
#   dnaio and its needs: virnucpro reads FASTA with them;
#   fair-esm: the original's ESM-2 for gpu_check's baseline (pure Python; the same flags
#   fetch its py3-none-any wheel).
# CPython 3.12 x86-64, pinned as tested.
wheels=(dnaio==1.2.4 xopen==2.1.0 isal==1.9.1 zlib-ng==1.1.0 backports.zstd==1.8.0
        fair-esm==2.0.0)

fetch_wheels() {  # fetch_wheels PYTHON: download them into $root/.whl
    "$1" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$root/.whl" "${wheels[@]}"
}

install_wheels() {  # install_wheels PYTHON: what .whl/ holds, into /tmp/site, on PYTHONPATH
    if compgen -G "$root/.whl/*.whl" >/dev/null; then
        "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$root"/.whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
}
