# Helpers shared by the launchers; sourced, not run. The sourcing script sets
# `prog` (its name in messages) and `dry_run` (0 or 1).
# shellcheck shell=bash disable=SC2154

usage_error() {
  printf '%s: error: %s\n' "$prog" "$1" >&2
  printf 'Run %s --help for usage.\n' "$prog" >&2
  exit 2
}

die() {
  printf '%s: %s\n' "$prog" "$1" >&2
  exit 1
}

# One word, quoted for a POSIX shell only where needed, so that printed
# commands can be pasted back into a shell; --option='value' keeps the
# option name outside the quotes.
shquote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    shquote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_cmd() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shquote "$word")"
  done
  printf '%s' "$out"
}

# Prints a command (as `+ command`) and runs it unless --dry-run.
run() {
  printf '+ %s\n' "$(quote_cmd "$@")"
  if (( ! dry_run )); then
    "$@"
  fi
}
