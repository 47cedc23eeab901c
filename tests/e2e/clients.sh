#!/usr/bin/env bash
# Runs the STOCK package clients against a registry URL, each in an isolated temporary HOME,
# printing the client's output and exiting with the client's exit code (or 1 when the client
# succeeded but the post-check failed, 2 on bad usage).
#
#   clients.sh npm-publish  REGISTRY_URL USER TOKEN PKGDIR_PARENT NAME VERSION [bearer|basic]
#   clients.sh npm-install  REGISTRY_URL USER TOKEN NAME VERSION [bearer|basic]
#   clients.sh npm-whoami   REGISTRY_URL USER TOKEN EXPECTED_USERNAME [bearer|basic]
#   clients.sh twine-upload UPLOAD_URL USER TOKEN NAME VERSION
#   clients.sh pip-install  INDEX_URL USER TOKEN NAME VERSION
#   clients.sh mvn-deploy   REPO_URL USER TOKEN GROUP ARTIFACT VERSION [basic|header]
#   clients.sh mvn-get      REPO_URL USER TOKEN GROUP ARTIFACT VERSION [basic|header]
#   clients.sh generic-put  URL TOKEN FILE [USER]
#   clients.sh generic-get  URL TOKEN OUT [USER]
#
# npm:   REGISTRY_URL may carry a path (http://127.0.0.1:8080/npm/acme/web/); a trailing slash is
#        added when missing. The .npmrc has registry=URL and //host:port/path/:_authToken=TOKEN
#        (bearer, default) or //host:port/path/:_auth=base64(USER:TOKEN) (basic).
#        npm-publish creates PKGDIR_PARENT/<name>-VERSION (tiny package, scoped names allowed)
#        and publishes it; npm-install installs NAME@VERSION into a fresh project and checks
#        node_modules/NAME/package.json has that version. npm-whoami checks `npm whoami`
#        prints EXPECTED_USERNAME.
# PyPI:  twine-upload builds an sdist + wheel of a tiny project NAME==VERSION
#        (python -m build --no-isolation, from the venv) and runs
#        twine upload --non-interactive --repository-url UPLOAD_URL -u USER -p TOKEN dist/*.
#        pip-install INDEX_URL is the full index URL (…/simple/); USER:TOKEN are put into it
#        (URL-encoded) and NAME==VERSION is installed --no-deps, no cache, into a throwaway
#        --target, then checked.
# Maven: settings.xml with a fresh localRepository, central mirrored to
#        file:///usr/share/maven-repo, and <server id=e2e> holding USER/TOKEN (basic, default)
#        or an <httpHeaders> Deploy-Token: TOKEN header (header). mvn-deploy uploads a tiny jar
#        (maven-deploy-plugin 3.0.0 deploy-file, generated pom); mvn-get fetches G:A:V with
#        maven-dependency-plugin 3.5.0 get and checks the jar is in the local repository.
# generic: curl PUT/GET with a Deploy-Token: TOKEN header, or Basic USER:TOKEN when USER is given.
#
# Environment:
#   TOKENGATE_E2E_HOME  where install.sh put the venv (default $HOME/.cache/tokengate-e2e)
#   E2E_KEEP_TMP=1      keep the per-command temporary HOME (its path is printed)
#   E2E_CA_FILE=PEM     trust this CA for https URLs (npm cafile, twine and pip --cert,
#                       a Maven truststore made with keytool, curl --cacert)
set -euo pipefail

E2E_HOME=${TOKENGATE_E2E_HOME:-$HOME/.cache/tokengate-e2e}
VENV=$E2E_HOME/venv
MVN_DEPLOY_PLUGIN=org.apache.maven.plugins:maven-deploy-plugin:3.0.0
MVN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.5.0
MVN_REPO_ID=e2e
CA_FILE=${E2E_CA_FILE:-}
CA_ARGS=()
if [ -n "$CA_FILE" ]; then
  CA_ARGS=(--cert "$CA_FILE")
  # requests lets these override a session's own CA bundle (twine --cert).
  export REQUESTS_CA_BUNDLE=$CA_FILE CURL_CA_BUNDLE=$CA_FILE
fi

log() { printf '[clients] %s\n' "$*" >&2; }
die() { printf '[clients] ERROR: %s\n' "$*" >&2; exit 2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

TMPH=""
cleanup() {
  if [ -n "$TMPH" ] && [ -d "$TMPH" ]; then
    if [ "${E2E_KEEP_TMP:-0}" = 1 ]; then log "kept $TMPH"; else rm -rf "$TMPH"; fi
  fi
}
trap cleanup EXIT

# Fresh HOME, and none of the caller's client configuration leaks in.
new_home() {
  TMPH=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-e2e-client.XXXXXX")
  export HOME=$TMPH/home
  mkdir -p "$HOME"
  export XDG_CONFIG_HOME=$HOME/.config XDG_CACHE_HOME=$HOME/.cache
  local v
  for v in $(env | sed -n 's/^\(\(npm_config_\|NPM_CONFIG_\|PIP_\|TWINE_\|MAVEN_\)[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$v"
  done
  unset NODE_AUTH_TOKEN VERDACCIO_PUBLIC_URL 2>/dev/null || true
  export NO_COLOR=1
}

# run CMD...: runs a client, echoing the command line (tokens masked), returns its exit code.
run() {
  local shown="$*"
  [ -n "${MASK:-}" ] && shown=${shown//"$MASK"/***}
  log "+ $shown"
  local rc=0
  "$@" || rc=$?
  log "exit code $rc"
  return "$rc"
}

with_slash() { case $1 in */) printf '%s' "$1" ;; *) printf '%s/' "$1" ;; esac; }

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

urlenc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

xml_escape() { printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

# ------------------------------------------------------------------------------------- npm
write_npmrc() { # write_npmrc FILE URL USER TOKEN MODE
  local file=$1 url=$2 user=$3 token=$4 mode=$5 nerf
  nerf=//${url#*://}   # //host:port/path/
  {
    echo "registry=$url"
    [ -z "$CA_FILE" ] || echo "cafile=$CA_FILE"
    case $mode in
      bearer) echo "$nerf:_authToken=$token" ;;
      basic) echo "$nerf:_auth=$(b64 "$user:$token")" ;;
      *) die "npm auth mode must be bearer or basic, not '$mode'" ;;
    esac
    echo "cache=$HOME/.npm-cache"
    echo "audit=false"
    echo "fund=false"
    echo "update-notifier=false"
    echo "loglevel=notice"
  } >"$file"
}

npm_cmd() { # npm_cmd NPMRC ARGS...
  local rc=$1
  shift
  MASK=$TOKEN run npm --userconfig "$rc" --globalconfig "$HOME/empty-globalrc" "$@"
}

cmd_npm_publish() {
  [ $# -eq 6 ] || [ $# -eq 7 ] || usage
  local url user parent name version mode
  url=$(with_slash "$1"); user=$2; TOKEN=$3; parent=$4; name=$5; version=$6; mode=${7:-bearer}
  new_home
  : >"$HOME/empty-globalrc"
  write_npmrc "$HOME/.npmrc" "$url" "$user" "$TOKEN" "$mode"
  mkdir -p "$parent"
  local dir
  dir=$(cd "$parent" && pwd)/$(printf '%s' "$name" | tr '/@' '__')-$version
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/package.json" <<EOF
{
  "name": "$name",
  "version": "$version",
  "description": "tokengate e2e test package",
  "main": "index.js",
  "license": "MIT"
}
EOF
  printf 'module.exports = %s;\n' "\"$name@$version\"" >"$dir/index.js"
  local extra=()
  case $name in @*/*) extra=(--access public) ;; esac
  cd "$dir"
  npm_cmd "$HOME/.npmrc" publish "${extra[@]}"
}

cmd_npm_install() {
  [ $# -eq 5 ] || [ $# -eq 6 ] || usage
  local url user name version mode
  url=$(with_slash "$1"); user=$2; TOKEN=$3; name=$4; version=$5; mode=${6:-bearer}
  new_home
  : >"$HOME/empty-globalrc"
  write_npmrc "$HOME/.npmrc" "$url" "$user" "$TOKEN" "$mode"
  local proj=$TMPH/project
  mkdir -p "$proj"
  echo '{"name":"e2e-consumer","version":"1.0.0","private":true}' >"$proj/package.json"
  cd "$proj"
  npm_cmd "$HOME/.npmrc" install --no-save "$name@$version" || return $?
  local pj=$proj/node_modules/$name/package.json got
  [ -f "$pj" ] || { log "FAIL: $pj missing"; return 1; }
  got=$(node -p "require('$pj').version")
  [ "$got" = "$version" ] || { log "FAIL: installed $name@$got, wanted $version"; return 1; }
  log "OK: node_modules/$name/package.json has version $got"
}

cmd_npm_whoami() {
  [ $# -eq 4 ] || [ $# -eq 5 ] || usage
  local url user expected mode who
  url=$(with_slash "$1"); user=$2; TOKEN=$3; expected=$4; mode=${5:-bearer}
  new_home
  : >"$HOME/empty-globalrc"
  write_npmrc "$HOME/.npmrc" "$url" "$user" "$TOKEN" "$mode"
  who=$(npm_cmd "$HOME/.npmrc" whoami) || return $?
  [ "$who" = "$expected" ] || { log "FAIL: npm whoami printed '$who', wanted '$expected'"; return 1; }
  log "OK: npm whoami printed $who"
}

# ------------------------------------------------------------------------------------- PyPI
need_venv() { [ -x "$VENV/bin/twine" ] || die "no venv at $VENV: run tests/e2e/install.sh"; }

cmd_twine_upload() {
  [ $# -eq 5 ] || usage
  local url user name version
  url=$1; user=$2; TOKEN=$3; name=$4; version=$5
  need_venv
  new_home
  export PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring PIP_CONFIG_FILE=/dev/null
  local src=$TMPH/src mod
  mod=$(printf '%s' "$name" | tr 'A-Z.-' 'a-z__')
  mkdir -p "$src/$mod"
  cat >"$src/pyproject.toml" <<EOF
[build-system]
requires = ["setuptools>=61", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
version = "$version"
description = "tokengate e2e test package"

[tool.setuptools]
packages = ["$mod"]
EOF
  printf '__version__ = "%s"\n' "$version" >"$src/$mod/__init__.py"
  cd "$src"
  run "$VENV/bin/python" -m build --no-isolation --sdist --wheel --outdir dist . >"$TMPH/build.log" 2>&1 ||
    { cat "$TMPH/build.log" >&2; return 1; }
  log "built: $(cd dist && echo *)"
  MASK=$TOKEN run "$VENV/bin/twine" upload --non-interactive --disable-progress-bar "${CA_ARGS[@]}" \
    --repository-url "$url" -u "$user" -p "$TOKEN" dist/*
}

cmd_pip_install() {
  [ $# -eq 5 ] || usage
  local url user name version
  url=$1; user=$2; TOKEN=$3; name=$4; version=$5
  need_venv
  new_home
  export PIP_CONFIG_FILE=/dev/null
  local scheme=${url%%://*} rest=${url#*://} authurl
  authurl="$scheme://$(urlenc "$user"):$(urlenc "$TOKEN")@$rest"
  local target=$TMPH/target
  MASK=$(urlenc "$TOKEN") run "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
    --no-cache-dir --no-deps --keyring-provider disabled --target "$target" "${CA_ARGS[@]}" \
    --index-url "$authurl" "$name==$version" || return $?
  local norm
  norm=$(printf '%s' "$name" | tr 'A-Z.-' 'a-z__')
  if ls -d "$target"/*.dist-info 2>/dev/null | tr 'A-Z.-' 'a-z__' | grep -q "/${norm}_${version//[.-]/_}_dist_info\$"; then
    log "OK: $name $version installed in --target"
  else
    log "FAIL: no dist-info for $name $version in $target: $(ls "$target")"
    return 1
  fi
}

# ------------------------------------------------------------------------------------- Maven
write_settings() { # write_settings FILE USER TOKEN MODE
  local file=$1 user token mode=$4 server
  user=$(xml_escape "$2"); token=$(xml_escape "$3")
  case $mode in
    basic)
      server="<server><id>$MVN_REPO_ID</id><username>$user</username><password>$token</password></server>" ;;
    header)
      server="<server><id>$MVN_REPO_ID</id><configuration><httpHeaders><property><name>Deploy-Token</name><value>$token</value></property></httpHeaders></configuration></server>" ;;
    *) die "maven auth mode must be basic or header, not '$mode'" ;;
  esac
  cat >"$file" <<EOF
<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0">
  <localRepository>$TMPH/m2repo</localRepository>
  <interactiveMode>false</interactiveMode>
  <offline>false</offline>
  <mirrors>
    <mirror>
      <id>debian</id>
      <mirrorOf>central</mirrorOf>
      <url>file:///usr/share/maven-repo</url>
    </mirror>
  </mirrors>
  <servers>
    $server
  </servers>
  <profiles>
    <profile>
      <!-- Debian's repo has no checksum files: do not warn about them (the e2e repo keeps
           the default checksum policy). -->
      <id>debian-repo</id>
      <repositories>
        <repository><id>central</id><url>file:///usr/share/maven-repo</url>
          <releases><checksumPolicy>ignore</checksumPolicy></releases>
          <snapshots><enabled>false</enabled></snapshots></repository>
      </repositories>
      <pluginRepositories>
        <pluginRepository><id>central</id><url>file:///usr/share/maven-repo</url>
          <releases><checksumPolicy>ignore</checksumPolicy></releases>
          <snapshots><enabled>false</enabled></snapshots></pluginRepository>
      </pluginRepositories>
    </profile>
  </profiles>
  <activeProfiles><activeProfile>debian-repo</activeProfile></activeProfiles>
</settings>
EOF
  echo '<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0"/>' >"$TMPH/global-settings.xml"
}

mvn_cmd() {
  local trust=()
  if [ -n "$CA_FILE" ]; then
    keytool -importcert -noprompt -alias e2e-ca -file "$CA_FILE" -keystore "$TMPH/trust.p12" \
      -storetype PKCS12 -storepass changeit >/dev/null 2>&1 || die "keytool could not import $CA_FILE"
    trust=(-Djavax.net.ssl.trustStore="$TMPH/trust.p12" -Djavax.net.ssl.trustStoreType=PKCS12
      -Djavax.net.ssl.trustStorePassword=changeit)
  fi
  MASK=$TOKEN run mvn -B -ntp "${trust[@]}" -gs "$TMPH/global-settings.xml" -s "$TMPH/settings.xml" "$@"
}

cmd_mvn_deploy() {
  [ $# -eq 6 ] || [ $# -eq 7 ] || usage
  local url user group artifact version mode
  url=$1; user=$2; TOKEN=$3; group=$4; artifact=$5; version=$6; mode=${7:-basic}
  new_home
  write_settings "$TMPH/settings.xml" "$user" "$TOKEN" "$mode"
  local jd=$TMPH/jar
  mkdir -p "$jd/content"
  printf '%s:%s:%s\n' "$group" "$artifact" "$version" >"$jd/content/e2e.txt"
  (cd "$jd/content" && jar cf "$jd/$artifact-$version.jar" e2e.txt)
  log "jar sha1: $(sha1sum "$jd/$artifact-$version.jar" | cut -d' ' -f1)"
  cd "$TMPH"
  mvn_cmd "$MVN_DEPLOY_PLUGIN:deploy-file" -Dfile="$jd/$artifact-$version.jar" \
    -DgroupId="$group" -DartifactId="$artifact" -Dversion="$version" -Dpackaging=jar \
    -DgeneratePom=true -DrepositoryId="$MVN_REPO_ID" -Durl="$url"
}

cmd_mvn_get() {
  [ $# -eq 6 ] || [ $# -eq 7 ] || usage
  local url user group artifact version mode
  url=$1; user=$2; TOKEN=$3; group=$4; artifact=$5; version=$6; mode=${7:-basic}
  new_home
  write_settings "$TMPH/settings.xml" "$user" "$TOKEN" "$mode"
  cd "$TMPH"
  mvn_cmd -U "$MVN_DEPENDENCY_PLUGIN:get" -Dartifact="$group:$artifact:$version" -Dtransitive=false \
    -DremoteRepositories="$MVN_REPO_ID::default::$url" || return $?
  local jar=$TMPH/m2repo/${group//.//}/$artifact/$version/$artifact-$version.jar
  if [ -f "$jar" ]; then
    log "OK: $jar (sha1 $(sha1sum "$jar" | cut -d' ' -f1)): $(unzip -p "$jar" e2e.txt 2>/dev/null || true)"
  else
    log "FAIL: $jar missing"
    return 1
  fi
}

# ------------------------------------------------------------------------------------- generic
curl_auth() { # sets AUTH array
  local token=$1 user=${2:-}
  if [ -n "$user" ]; then AUTH=(-u "$user:$token"); else AUTH=(-H "Deploy-Token: $token"); fi
}

cmd_generic_put() {
  [ $# -eq 3 ] || [ $# -eq 4 ] || usage
  local url=$1 file=$3
  TOKEN=$2
  [ -f "$file" ] || die "no such file: $file"
  curl_auth "$TOKEN" "${4:-}"
  [ -z "$CA_FILE" ] || AUTH+=(--cacert "$CA_FILE")
  MASK=$TOKEN run curl -sS -f -T "$file" "${AUTH[@]}" -w 'HTTP %{http_code}\n' "$url"
}

cmd_generic_get() {
  [ $# -eq 3 ] || [ $# -eq 4 ] || usage
  local url=$1 out=$3
  TOKEN=$2
  curl_auth "$TOKEN" "${4:-}"
  [ -z "$CA_FILE" ] || AUTH+=(--cacert "$CA_FILE")
  MASK=$TOKEN run curl -sS -f -o "$out" "${AUTH[@]}" -w 'HTTP %{http_code}\n' "$url"
}

TOKEN=""
sub=${1:-}
[ $# -gt 0 ] && shift
case $sub in
  npm-publish) cmd_npm_publish "$@" ;;
  npm-install) cmd_npm_install "$@" ;;
  npm-whoami) cmd_npm_whoami "$@" ;;
  twine-upload) cmd_twine_upload "$@" ;;
  pip-install) cmd_pip_install "$@" ;;
  mvn-deploy) cmd_mvn_deploy "$@" ;;
  mvn-get) cmd_mvn_get "$@" ;;
  generic-put) cmd_generic_put "$@" ;;
  generic-get) cmd_generic_get "$@" ;;
  *) usage ;;
esac
