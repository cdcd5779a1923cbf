#!/usr/bin/env bash
# title: C# / .NET · Npgsql
# Not runnable on this project's machines: no .NET SDK is served by the registries they reach
# (Debian bookworm has no dotnet-sdk-8.0: `apt-cache policy dotnet-sdk-8.0` finds nothing, and
# NuGet is not reachable for the Npgsql package either). With a .NET 8 SDK and NuGet access,
# `dotnet run` here runs the same checks as the other rows.
source "$(dirname "$0")/../../lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"
why="no .NET SDK here: Debian bookworm has no dotnet-sdk-8.0 (apt-cache policy finds none) and NuGet is unreachable; needs the .NET 8 SDK + NuGet (Npgsql 9.0.3), then this row runs Program.cs"
case "${1:-}" in
  install)
    if command -v dotnet >/dev/null 2>&1; then cd "$here" && dotnet restore --locked-mode 2>/dev/null || dotnet restore; fi
    ;;
  test)
    if ! command -v dotnet >/dev/null 2>&1; then echo "SKIP dotnet-npgsql $why"; exit 0; fi
    cd "$here" && exec dotnet run --no-restore -c Release
    ;;
  *) echo "usage: $0 install|test" >&2; exit 2 ;;
esac
