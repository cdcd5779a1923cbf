#!/usr/bin/env bash
# title: Ruby · pg gem (Debian's ruby-pg)
source "$(dirname "$0")/../../lib.sh"
case "${1:-}" in
  install)
    apt_ensure ruby ruby
    ruby -e 'require "pg"' 2>/dev/null || apt_ensure /nonexistent ruby-pg
    ;;
  test) exec ruby "$(dirname "$0")/main.rb" ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
