#!/usr/bin/env bash
# Reviews a change to a keygate policy folder: validate, the scenario tests, formatting, lint,
# and a proof of what the change does to access compared with BASE (a git revision).
#
#   deploy/ci/policy-review.sh BASE [POLICY_DIR]
#
# POLICY_DIR defaults to `policies`, relative to the repository's top. Environment:
#   KEYGATE         the keygate binary (default: keygate on the PATH)
#   POLICY_WIDENS   actions the change is meant to widen, separated by spaces or commas
#                   (the diff reports them but does not fail on them)
#   CVC5            the cvc5 solver binary (default: cvc5 on the PATH)
#   GITHUB_STEP_SUMMARY  when set (GitHub Actions), the report is appended to it as Markdown
#
# Every step runs, even after one fails. Exit status: 0 when all pass, 1 when any finds a
# problem (invalid policies, a failing scenario, unformatted files, a lint finding, a widening
# not declared), 2 when the review itself could not run (no solver, no such revision).
set -uo pipefail

base="${1:?usage: policy-review.sh BASE [POLICY_DIR]}"
dir="${2:-policies}"
keygate="${KEYGATE:-keygate}"
top="$(git rev-parse --show-toplevel)" || exit 2
cd "$top" || exit 2

if ! git rev-parse --quiet --verify "${base}^{commit}" >/dev/null; then
    echo "policy-review: no revision '$base' in this clone (fetch it, or fetch with depth 2)" >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
summary="$work/summary.md"
status=0
{
    echo "## keygate policy review: \`$dir\` against \`$(git rev-parse --short "$base")\`"
    echo
} >"$summary"

# The policy files (their ids, their file names) are the pull request author's text: in the
# log, GitHub must not read a line of theirs as a workflow command; in the summary, it is
# HTML-escaped inside <pre>, so no fence or tag of theirs can end it early.
print_verbatim() {
    if [[ -n "${GITHUB_ACTIONS:-}" ]]; then
        local token
        token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
        echo "::stop-commands::$token"
        cat "$1"
        echo "::$token::"
    else
        cat "$1"
    fi
}

# step NAME COMMAND...: runs it, prints and records its output; remembers the worst status
# (a command exiting 2 means the check could not run).
step() {
    local name="$1"
    shift
    [[ -n "${GITHUB_ACTIONS:-}" ]] && echo "::group::$name"
    echo "\$ $*"
    "$@" >"$work/out" 2>&1
    local code=$?
    print_verbatim "$work/out"
    [[ -n "${GITHUB_ACTIONS:-}" ]] && echo "::endgroup::"
    local mark="passed"
    if ((code != 0)); then
        mark="FAILED (exit $code)"
        if ((code == 2)); then
            status=2
        elif ((status == 0)); then
            status=1
        fi
    fi
    {
        echo "### $name: $mark"
        echo
        echo '<pre>'
        head -c 60000 "$work/out" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'
        echo '</pre>'
        echo
    } >>"$summary"
    echo "policy-review: $name: $mark"
}

step validate "$keygate" policy validate "$dir"
valid=$((status == 0))
if ((!valid)); then
    # Invalid policies are the finding; lint and diff need a valid set.
    status=1
fi
if [[ -d "$dir/tests" ]]; then
    step test "$keygate" policy test "$dir"
fi
step format "$keygate" policy fmt --check "$dir"
if ((valid)); then
    step lint "$keygate" policy lint "$dir"
fi

# The folder as it was at BASE. A folder that did not exist there has nothing to compare with.
if ((!valid)); then
    echo "### lint, diff: skipped (the policies do not validate)" >>"$summary"
elif [[ -n "$(git ls-tree -d "$base" -- "$dir")" ]]; then
    git archive "$base" -- "$dir" | tar -x -C "$work" || exit 2
    allow=()
    widens="${POLICY_WIDENS:-}"
    for action in ${widens//,/ }; do
        allow+=(--allow-widening "$action")
    done
    step diff "$keygate" policy diff "$work/$dir" "$dir" "${allow[@]}"
else
    echo "policy-review: $dir did not exist at $base; nothing to diff"
    echo "### diff: skipped ($dir did not exist at \`$base\`)" >>"$summary"
fi

if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
    cat "$summary" >>"$GITHUB_STEP_SUMMARY"
fi
exit "$status"
