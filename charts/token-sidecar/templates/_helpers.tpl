{{/*
Named templates of the token-sidecar chart.

Public, for other charts that list this chart as a dependency and add the sidecar to their own
pods (see the chart's README). Each takes this chart's scope, `(index .Subcharts "token-sidecar")`
in the parent chart, or `.` inside this chart:

  token-sidecar.container       the sidecar, one list item for `initContainers:` (native sidecar)
  token-sidecar.volumes         its volumes, list items for `volumes:`
  token-sidecar.podAnnotations  a checksum of the config, so that a config change rolls the pods
  token-sidecar.config          the TOML config (rendered into this chart's ConfigMap)
  token-sidecar.fullname        the name of the ConfigMap the volumes point at

Everything else here is internal.
*/}}

{{- define "token-sidecar.name" -}}
{{- default "token-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of every resource: RELEASE-token-sidecar (or the release name when it already
contains it). It does not depend on .Chart, so it is the same from a parent chart's scope.
*/}}
{{- define "token-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "token-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "token-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "token-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "token-sidecar.labels" -}}
helm.sh/chart: {{ include "token-sidecar.chart" . }}
{{ include "token-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "token-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The Secret's name: existingSecret, or "" when nothing reads a key of it (every profile and route
does without, e.g. workload identity with a literal client id). Required as soon as a key is read.
*/}}
{{- define "token-sidecar.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if include "token-sidecar.usesSecret" . }}
{{- fail "existingSecret is required: the name of a Secret holding the credentials (keys client-id, client-secret, jwt, ...); the chart never creates one. See the chart's README." }}
{{- end }}
{{- end }}

{{/* "true" when a profile, a route or [shared] reads a key of existingSecret, else "". */}}
{{- define "token-sidecar.usesSecret" -}}
{{- $v := .Values }}
{{- $uses := false }}
{{- range $name := keys ($v.tokens | default dict) }}
{{- if include "token-sidecar.profileSecretKeys" (dict "name" $name "token" (index $v.tokens $name)) | fromJson }}
{{- $uses = true }}
{{- end }}
{{- end }}
{{- range $r := $v.routes | default list }}
{{- with $r.secretKeys }}
{{- if or .tlsClientCert .tlsClientKey }}
{{- $uses = true }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.redis.existingSecretKey }}
{{- $uses = true }}
{{- end }}
{{- if and (include "token-sidecar.redisOn" .) $v.redis.sharedKeySecretKey }}
{{- $uses = true }}
{{- end }}
{{- with $v.redis.tls }}
{{- if and .enabled (or (.ca | default dict).existingSecretKey .clientCertSecretKey .clientKeySecretKey) }}
{{- $uses = true }}
{{- end }}
{{- end }}
{{- if $uses }}true{{ end }}
{{- end }}

{{/*
"true" when the replicas share their tokens through Redis ([shared] is written): a URL (in
values or in existingSecret), sentinels or cluster nodes; else "".
*/}}
{{- define "token-sidecar.redisOn" -}}
{{- $r := .Values.redis }}
{{- if or $r.url $r.existingSecretKey ($r.sentinel | default dict).nodes ($r.cluster | default dict).nodes }}true{{ end }}
{{- end }}

{{/*
Where the sidecar reads the Redis CA: a file of existingSecret, or of the Secret or ConfigMap
named by redis.tls.ca (mounted at redisCaDir); "" for the system's CAs.
*/}}
{{- define "token-sidecar.redisCaFile" -}}
{{- $tls := .Values.redis.tls | default dict }}
{{- $ca := $tls.ca | default dict }}
{{- if $tls.enabled }}
{{- if $ca.existingSecretKey }}
{{- printf "%s/%s" (include "token-sidecar.secretDir" .) $ca.existingSecretKey }}
{{- else if or $ca.secretName $ca.configMapName }}
{{- printf "%s/ca.crt" (include "token-sidecar.redisCaDir" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Redis settings that values alone cannot check (the schema does the rest). Node lists are
checked here rather than by a schema pattern, so that a mistaken value (a URL with a password)
is never quoted back in an error.
*/}}
{{- define "token-sidecar.redisCheck" -}}
{{- $r := .Values.redis }}
{{- $tls := $r.tls | default dict }}
{{- $ca := $tls.ca | default dict }}
{{- $sentinel := $r.sentinel | default dict }}
{{- $cluster := $r.cluster | default dict }}
{{- if contains "@" $r.url }}
{{- fail "redis.url: a URL with credentials must not be written in values; put it in existingSecret and set redis.existingSecretKey" }}
{{- end }}
{{- if and $r.url $r.existingSecretKey }}
{{- fail "redis: set either url (no credentials) or existingSecretKey (the URL from existingSecret), not both" }}
{{- end }}
{{- if and $sentinel.nodes $cluster.nodes }}
{{- fail "redis: sentinel.nodes and cluster.nodes: a Redis is reached through Sentinel or as a Cluster, not both" }}
{{- end }}
{{- if and $sentinel.nodes (not $sentinel.master) }}
{{- fail "redis.sentinel.master is required with sentinel.nodes: the name the sentinels monitor the primary under (e.g. mymaster)" }}
{{- end }}
{{- if and $sentinel.master (not $sentinel.nodes) }}
{{- fail "redis.sentinel.master needs redis.sentinel.nodes: the sentinels to ask (HOST:PORT)" }}
{{- end }}
{{- range $what, $nodes := dict "sentinel" ($sentinel.nodes | default list) "cluster" ($cluster.nodes | default list) }}
{{- range $i, $n := $nodes }}
{{- $n = toString $n }}
{{- $port := regexReplaceAll "^.*:" $n "" }}
{{- if or (not (regexMatch `^([^\s@/:\[\]]+|\[[0-9a-fA-F:.]+\]):[0-9]{1,5}$` $n)) (lt (int $port) 1) (gt (int $port) 65535) }}
{{- fail (printf "redis.%s.nodes[%d] is not HOST:PORT (no scheme, no credentials: a password goes into the URL in existingSecret); the value is not repeated here" $what $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- $caSources := 0 }}
{{- range $k := list "existingSecretKey" "secretName" "configMapName" }}
{{- if index $ca $k }}
{{- $caSources = add1 $caSources }}
{{- end }}
{{- end }}
{{- if gt $caSources 1 }}
{{- fail "redis.tls.ca: one source only: existingSecretKey, secretName or configMapName" }}
{{- end }}
{{- if not (eq (empty $tls.clientCertSecretKey) (empty $tls.clientKeySecretKey)) }}
{{- fail "redis.tls: clientCertSecretKey and clientKeySecretKey go together (the client certificate and its key)" }}
{{- end }}
{{- if and (not $tls.enabled) (or $caSources $tls.clientCertSecretKey) }}
{{- fail "redis.tls: a CA or a client certificate needs redis.tls.enabled (and a rediss:// URL)" }}
{{- end }}
{{- if $tls.enabled }}
{{- if not (include "token-sidecar.redisOn" .) }}
{{- fail "redis.tls.enabled: no Redis is configured (redis.url, existingSecretKey, sentinel.nodes or cluster.nodes)" }}
{{- end }}
{{- if and $r.url (not (hasPrefix "rediss://" $r.url)) }}
{{- fail "redis.tls.enabled: redis.url must be rediss://" }}
{{- end }}
{{- if and (not $r.url) (not $r.existingSecretKey) }}
{{- fail "redis.tls.enabled: the URL gives the scheme, also with sentinel or cluster: set redis.url to rediss://redis/0 (with sentinel or cluster, only its scheme and database count) or redis.existingSecretKey (a rediss:// URL in existingSecret)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the Secret, the config and the state live in the sidecar container. */}}
{{- define "token-sidecar.secretDir" -}}/var/run/secrets/token-sidecar{{- end }}
{{- define "token-sidecar.configDir" -}}/etc/token-sidecar{{- end }}
{{- define "token-sidecar.stateDir" -}}/var/lib/token-sidecar{{- end }}
{{- define "token-sidecar.redisCaDir" -}}/etc/token-sidecar-redis-ca{{- end }}

{{/*
The directory the workload identity token is mounted at (the directory of workloadIdentity.path),
checked against the chart's other mounts.
*/}}
{{- define "token-sidecar.workloadIdentityDir" -}}
{{- $dir := dir .Values.workloadIdentity.path }}
{{- range $other := list (include "token-sidecar.secretDir" $) (include "token-sidecar.configDir" $) (include "token-sidecar.stateDir" $) (include "token-sidecar.redisCaDir" $) }}
{{- if or (hasPrefix (printf "%s/" $other) (printf "%s/" $dir)) (hasPrefix (printf "%s/" $dir) (printf "%s/" $other)) }}
{{- fail (printf "workloadIdentity.path: its directory %s overlaps the chart's mount %s; choose another directory" $dir $other) }}
{{- end }}
{{- end }}
{{- if eq $dir "/" }}
{{- fail "workloadIdentity.path: the token file needs a directory of its own (e.g. /var/run/secrets/workload-identity/token)" }}
{{- end }}
{{- $dir }}
{{- end }}

{{- define "token-sidecar.oauthGrants" -}}
{{- list "client_credentials" "jwt_bearer" "refresh_token" "password" "token_exchange" | toJson }}
{{- end }}

{{- define "token-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "token-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret keys a token profile reads, as JSON: the grant's and the client authentication's
defaults, then the profile's `secretKeys` (where "" switches a key off).
Input: (dict "name" NAME "token" PROFILE).
*/}}
{{- define "token-sidecar.profileSecretKeys" -}}
{{- $t := .token }}
{{- $grant := $t.grant | default "" }}
{{- $wi := $t.workloadIdentity | default "" }}
{{- $auth := $t.client_auth | default "" }}
{{- if eq $wi "assertion" }}
{{- $auth = "assertion_file" }}
{{- end }}
{{- $keys := dict }}
{{- if has $grant (include "token-sidecar.oauthGrants" . | fromJsonArray) }}
{{- if not (hasKey $t "client_id") }}
{{- $_ := set $keys "clientId" "client-id" }}
{{- end }}
{{- if has $auth (list "" "basic" "body" "client_secret_jwt") }}
{{- $_ := set $keys "clientSecret" "client-secret" }}
{{- else if eq $auth "private_key_jwt" }}
{{- $_ := set $keys "jwtSigningKey" "jwt-signing-key" }}
{{- else if eq $auth "tls" }}
{{- $_ := set $keys "tlsClientCert" "tls.crt" }}
{{- $_ := set $keys "tlsClientKey" "tls.key" }}
{{- else if and (eq $auth "assertion_file") (ne $wi "assertion") }}
{{- $_ := set $keys "clientAssertion" "client-assertion" }}
{{- end }}
{{- end }}
{{- if eq $grant "jwt_bearer" }}
{{- $_ := set $keys "assertion" "jwt" }}
{{- else if eq $grant "refresh_token" }}
{{- $_ := set $keys "refreshToken" "refresh-token" }}
{{- else if eq $grant "password" }}
{{- $_ := set $keys "password" "password" }}
{{- else if and (eq $grant "token_exchange") (ne $wi "subject") }}
{{- $_ := set $keys "subjectToken" "subject-token" }}
{{- else if and (eq $grant "file") (not (hasKey $t "token_file")) }}
{{- $_ := set $keys "token" "token" }}
{{- else if eq $grant "static" }}
{{- $_ := set $keys "staticToken" "static-token" }}
{{- end }}
{{- range $k, $v := ($t.secretKeys | default dict) }}
{{- $_ := set $keys $k $v }}
{{- end }}
{{- $out := dict }}
{{- range $k, $v := $keys }}
{{- if $v }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The environment variable through which a Secret key reaches the config (${VAR}): PROFILE_WHAT,
e.g. RC_CLIENT_ID. Input: (dict "name" PROFILE "what" "CLIENT_ID").
*/}}
{{- define "token-sidecar.envName" -}}
{{- $n := printf "%s_%s" (.name | upper | replace "-" "_") .what }}
{{- if hasPrefix "TOKEN_SIDECAR_" $n }}
{{- fail (printf "token profile %q: its variable %s would be read as a token-sidecar flag; rename the profile" .name $n) }}
{{- end }}
{{- $n }}
{{- end }}

{{/* A TOML value from a values scalar: strings are JSON-quoted (valid TOML basic strings). */}}
{{- define "token-sidecar.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ int64 . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "token-sidecar.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "cannot write %v (%s) into the TOML config" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* The TOML config file. */}}
{{- define "token-sidecar.config" -}}
{{- $v := .Values }}
{{- if not $v.routes }}
{{- fail "routes: at least one route is required (name, listen, upstream, token)" }}
{{- end }}
{{- if not $v.tokens }}
{{- fail "tokens: at least one token profile is required (tokens.NAME.grant, token_url, ...)" }}
{{- end }}
{{- include "token-sidecar.redisCheck" . }}
{{- /* Keys and certificates are files of the Secret, never values (the error does not quote them). */}}
{{- range $i, $r := $v.routes }}
{{- if contains "-----BEGIN" (toJson $r) }}
{{- fail (printf "routes[%d]: a PEM block (a private key or a certificate) was given in values; put it in existingSecret and name its key in the route's secretKeys (tlsClientCert, tlsClientKey)" $i) }}
{{- end }}
{{- with $r.secretKeys }}
{{- if not (eq (empty .tlsClientCert) (empty .tlsClientKey)) }}
{{- fail (printf "routes[%d].secretKeys: tlsClientCert and tlsClientKey go together (the upstream's client certificate and its key)" $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name := keys $v.tokens | sortAlpha }}
{{- $t := index $v.tokens $name }}
{{- if contains "-----BEGIN" (toJson $t) }}
{{- fail (printf "tokens.%s: a PEM block (a private key or a certificate) was given in values; put it in existingSecret and name its key in secretKeys (jwtSigningKey, tlsClientCert, tlsClientKey, tokenCa)" $name) }}
{{- end }}
{{- with $t.workloadIdentity }}
{{- if not $v.workloadIdentity.enabled }}
{{- fail (printf "tokens.%s.workloadIdentity: set workloadIdentity.enabled (and its audience) to mount the service-account token" $name) }}
{{- end }}
{{- if and (eq . "assertion") $t.client_auth (ne $t.client_auth "assertion_file") }}
{{- fail (printf "tokens.%s: workloadIdentity: assertion is client_auth assertion_file, not %s" $name $t.client_auth) }}
{{- end }}
{{- if and (eq . "subject") (ne $t.grant "token_exchange") }}
{{- fail (printf "tokens.%s: workloadIdentity: subject is the subject token of grant token_exchange, not of %s" $name $t.grant) }}
{{- end }}
{{- end }}
{{- $sk := $t.secretKeys | default dict }}
{{- if and (eq ($t.workloadIdentity | default "") "assertion") $sk.clientAssertion }}
{{- fail (printf "tokens.%s: the client assertion is the workload identity token; drop secretKeys.clientAssertion" $name) }}
{{- end }}
{{- if and (eq ($t.workloadIdentity | default "") "subject") $sk.subjectToken }}
{{- fail (printf "tokens.%s: the subject token is the workload identity token; drop secretKeys.subjectToken" $name) }}
{{- end }}
{{- end }}
{{- if and $v.workloadIdentity.enabled (not $v.workloadIdentity.audience) }}
{{- fail "workloadIdentity.audience is required: the audience the identity provider trusts (Azure: api://AzureADTokenExchange)" }}
{{- end }}
{{- $secretDir := include "token-sidecar.secretDir" . -}}
{{- $secretName := include "token-sidecar.secretName" . -}}
# token-sidecar configuration, rendered by the token-sidecar chart from its values.
{{- if $secretName }}
# No secret is written here: secrets are files of the Secret {{ $secretName }}
# mounted at {{ $secretDir }}/, or ${VARIABLES} set from it.
{{- else }}
# No secret is written here, and none is used: no profile reads a key of a Secret.
{{- end }}
{{- if $v.workloadIdentity.enabled }}
# The workload identity token (audience {{ $v.workloadIdentity.audience }}) is the
# projected service-account token {{ $v.workloadIdentity.path }}.
{{- end }}
{{- range $k := keys $v.config | sortAlpha }}
{{ $k }} = {{ include "token-sidecar.tomlValue" (index $v.config $k) }}
{{- end }}

[admin]
listen = "0.0.0.0:{{ $v.admin.port }}"
{{- range $r := $v.routes }}

[[route]]
{{- if hasKey $r "name" }}
name = {{ include "token-sidecar.tomlValue" $r.name }}
{{- end }}
{{- range $k := keys $r | sortAlpha }}
{{- if not (has $k (list "name" "secretKeys")) }}
{{ $k }} = {{ include "token-sidecar.tomlValue" (index $r $k) }}
{{- end }}
{{- end }}
{{- with $r.secretKeys }}
{{- with .tlsClientCert }}
upstream_tls_client_cert_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with .tlsClientKey }}
upstream_tls_client_key_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name := keys $v.tokens | sortAlpha }}
{{- $t := index $v.tokens $name }}
{{- $secretKeys := include "token-sidecar.profileSecretKeys" (dict "name" $name "token" $t) | fromJson }}

[token.{{ $name }}]
grant = {{ include "token-sidecar.tomlValue" $t.grant }}
{{- range $k := keys $t | sortAlpha }}
{{- if not (has $k (list "grant" "params" "secretKeys" "state_file" "workloadIdentity")) }}
{{ $k }} = {{ include "token-sidecar.tomlValue" (index $t $k) }}
{{- end }}
{{- end }}
{{- with $t.params }}
params = { {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ toJson $k }} = {{ index $t.params $k | toString | toJson }}{{ end }} }
{{- end }}
{{- with $secretKeys.clientId }}
client_id = "${ {{- include "token-sidecar.envName" (dict "name" $name "what" "CLIENT_ID") -}} }"
{{- end }}
{{- with $secretKeys.clientSecret }}
client_secret_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- if eq ($t.workloadIdentity | default "") "assertion" }}
{{- if not $t.client_auth }}
client_auth = "assertion_file"
{{- end }}
# The workload identity token, read before every token request.
client_assertion_file = {{ toJson $v.workloadIdentity.path }}
{{- end }}
{{- with $secretKeys.clientAssertion }}
client_assertion_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.jwtSigningKey }}
jwt_signing_key_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.tlsClientCert }}
tls_client_cert_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.tlsClientKey }}
tls_client_key_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.tokenCa }}
token_ca_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- if eq ($t.workloadIdentity | default "") "subject" }}
# The workload identity token, read before every token request.
subject_token_file = {{ toJson $v.workloadIdentity.path }}
{{- end }}
{{- with $secretKeys.subjectToken }}
subject_token_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.actorToken }}
actor_token_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.assertion }}
assertion_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.refreshToken }}
refresh_token_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.password }}
password_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.token }}
token_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $secretKeys.staticToken }}
static_token = "${ {{- include "token-sidecar.envName" (dict "name" $name "what" "STATIC_TOKEN") -}} }"
{{- end }}
{{- if hasKey $t "state_file" }}
{{- with $t.state_file }}
state_file = {{ toJson . }}
{{- end }}
{{- else if has $t.grant (include "token-sidecar.oauthGrants" $ | fromJsonArray) }}
state_file = {{ printf "%s/state/%s.json" (include "token-sidecar.stateDir" $) $name | toJson }}
{{- end }}
{{- end }}
{{- if include "token-sidecar.redisOn" . }}
{{- $r := $v.redis }}
{{- $tls := $r.tls | default dict }}

[shared]
{{- if $r.existingSecretKey }}
# The URL, password included, is a file of the mounted Secret: in neither the command line nor
# the environment.
redis_url_file = {{ printf "%s/%s" $secretDir $r.existingSecretKey | toJson }}
{{- else if $r.url }}
redis_url = {{ toJson $r.url }}
{{- end }}
{{- with ($r.sentinel | default dict).nodes }}
# Sentinel: the primary the sentinels name, asked again on every reconnection (failovers).
# The URL gives only the scheme, the user, the password and the database.
redis_sentinels = {{ include "token-sidecar.tomlValue" . }}
redis_sentinel_master = {{ toJson $r.sentinel.master }}
{{- end }}
{{- with ($r.cluster | default dict).nodes }}
# Redis Cluster, reached through these nodes; the URL gives only the scheme, user and password.
redis_cluster_nodes = {{ include "token-sidecar.tomlValue" . }}
{{- end }}
{{- with include "token-sidecar.redisCaFile" . }}
# The CA of the Redis servers' certificates.
redis_ca_file = {{ toJson . }}
{{- end }}
{{- if $tls.enabled }}
{{- with $tls.clientCertSecretKey }}
# A client certificate for Redis (tls-auth-clients), files of the mounted Secret.
redis_client_cert_file = {{ printf "%s/%s" $secretDir . | toJson }}
redis_client_key_file = {{ printf "%s/%s" $secretDir $tls.clientKeySecretKey | toJson }}
{{- end }}
{{- end }}
{{- with $v.redis.sharedKeySecretKey }}
# Entries in Redis are sealed with this key: Redis users see no token and cannot plant one.
shared_key_file = {{ printf "%s/%s" $secretDir . | toJson }}
{{- end }}
{{- with $v.redis.keyPrefix }}
key_prefix = {{ toJson . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the config. */}}
{{- define "token-sidecar.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "token-sidecar.fullname" . }}
  labels:
    {{- include "token-sidecar.labels" . | nindent 4 }}
data:
  config.toml: |
    {{- include "token-sidecar.config" . | nindent 4 }}
{{- end }}

{{- define "token-sidecar.podAnnotations" -}}
checksum/token-sidecar-config: {{ include "token-sidecar.config" . | sha256sum }}
{{- end }}

{{/*
The sidecar container: one list item for `initContainers:`. `restartPolicy: Always` makes it a
native sidecar (Kubernetes 1.29+): started before the app containers, which wait for its
startupProbe (a token is held), and stopped after them.
*/}}
{{- define "token-sidecar.container" -}}
{{- $v := .Values }}
{{- $secret := include "token-sidecar.secretName" . -}}
{{- $wi := $v.workloadIdentity -}}
- name: token-sidecar
  image: {{ include "token-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  restartPolicy: Always
  args:
    - --config
    - {{ include "token-sidecar.configDir" . }}/config.toml
  env:
    - name: TOKEN_SIDECAR_LOG
      value: {{ $v.logLevel | quote }}
    {{- range $name := keys $v.tokens | sortAlpha }}
    {{- $keys := include "token-sidecar.profileSecretKeys" (dict "name" $name "token" (index $v.tokens $name)) | fromJson }}
    {{- with $keys.clientId }}
    - name: {{ include "token-sidecar.envName" (dict "name" $name "what" "CLIENT_ID") }}
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ . }}
    {{- end }}
    {{- with $keys.staticToken }}
    - name: {{ include "token-sidecar.envName" (dict "name" $name "what" "STATIC_TOKEN") }}
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ . }}
    {{- end }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $v.admin.port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: metrics
    {{- toYaml $v.probes.startup | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
    {{- toYaml $v.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: metrics
    {{- toYaml $v.probes.liveness | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  volumeMounts:
    - name: token-sidecar-config
      mountPath: {{ include "token-sidecar.configDir" . }}
      readOnly: true
    {{- if $secret }}
    - name: token-sidecar-credentials
      mountPath: {{ include "token-sidecar.secretDir" . }}
      readOnly: true
    {{- end }}
    {{- if include "token-sidecar.redisCaVolume" . }}
    # The CA of the Redis servers.
    - name: token-sidecar-redis-ca
      mountPath: {{ include "token-sidecar.redisCaDir" . }}
      readOnly: true
    {{- end }}
    {{- if $wi.enabled }}
    # The workload identity token: in this container only, not in the app's.
    - name: token-sidecar-workload-identity
      mountPath: {{ include "token-sidecar.workloadIdentityDir" . }}
      readOnly: true
    {{- end }}
    - name: token-sidecar-state
      mountPath: {{ include "token-sidecar.stateDir" . }}
{{- end }}

{{/*
The volume of the Redis CA when it comes from a Secret or a ConfigMap of its own (the key named
only, as ca.crt), else "".
*/}}
{{- define "token-sidecar.redisCaVolume" -}}
{{- $tls := .Values.redis.tls | default dict }}
{{- $ca := $tls.ca | default dict }}
{{- if and $tls.enabled (not $ca.existingSecretKey) }}
{{- if $ca.secretName }}
- name: token-sidecar-redis-ca
  secret:
    secretName: {{ $ca.secretName }}
    defaultMode: {{ .Values.secretFileMode }}
    items:
      - key: {{ $ca.key | default "ca.crt" }}
        path: ca.crt
{{- else if $ca.configMapName }}
- name: token-sidecar-redis-ca
  configMap:
    name: {{ $ca.configMapName }}
    items:
      - key: {{ $ca.key | default "ca.crt" }}
        path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* The sidecar's volumes: list items for `volumes:`. */}}
{{- define "token-sidecar.volumes" -}}
- name: token-sidecar-config
  configMap:
    name: {{ include "token-sidecar.fullname" . }}
{{- with include "token-sidecar.secretName" . }}
- name: token-sidecar-credentials
  secret:
    secretName: {{ . }}
    defaultMode: {{ $.Values.secretFileMode }}
{{- end }}
{{- with include "token-sidecar.redisCaVolume" . }}
{{- . }}
{{- end }}
{{- with .Values.workloadIdentity }}
{{- if .enabled }}
# A service-account token for {{ .audience }} only (not for the Kubernetes API), renewed
# by the kubelet; mounted into the sidecar container only. The kubelet sets its mode: 0640 and
# group fsGroup when the pod has one, else owned by the containers' common runAsUser (0600).
- name: token-sidecar-workload-identity
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .audience | quote }}
          expirationSeconds: {{ .expirationSeconds }}
          path: {{ base .path }}
{{- end }}
{{- end }}
# The state files (token set, rotated refresh token): in memory, never on the node's disk,
# kept across restarts of the sidecar container.
- name: token-sidecar-state
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
