{{/*
Every setting a service reads from its environment (README, Configuration) and every
secret file it is given, in one place. Secrets are files in one read-only projected
volume (`shop.secretFiles`), named by a *_FILE variable; no secret value is an
environment variable or a value of this chart. Called with
(dict "root" $ "service" <entry of files/registry.yaml> "config" <shop.config>).
*/}}

{{- define "shop.secretRoot" -}}/etc/shop{{- end -}}

{{- define "shop.env" -}}
{{- $root := .root -}}
{{- $svc := .service -}}
{{- $p := $svc.envPrefix -}}
{{- $secrets := include "shop.secretRoot" . -}}
{{- $prefix := $root.Values.kafka.topicPrefix -}}
{{- $database := include "shop.database" (dict "root" $root "name" $svc.name) -}}
- name: {{ $p }}PORT
  value: {{ $svc.port | quote }}
- name: {{ $p }}CONSUMER_GROUP
  value: {{ printf "%s%s" $prefix $svc.consumerGroup | quote }}
# PostgreSQL: the owner role of the service's own database, no password in the URL; the
# server's certificate is checked against the cluster's CA.
- name: {{ $p }}DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s@%s-rw:5432/%s?sslmode=verify-full&sslrootcert=%s/database/ca.crt" $svc.name $database $svc.name $secrets | quote }}
- name: {{ $p }}DATABASE_PASSWORD_FILE
  value: {{ printf "%s/database/password" $secrets }}
# Kafka: SASL_SSL (SCRAM-SHA-512) as the service's own principal, trusting the cluster CA.
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ printf "%s-kafka-bootstrap:9093" (include "shop.kafka" $root) | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: SASL_SSL
- name: KAFKA_SASL_USERNAME
  value: {{ $svc.name | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "%s/kafka/password" $secrets }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "%s/kafka/ca.crt" $secrets }}
- name: TOPIC_PREFIX
  value: {{ $prefix | quote }}
- name: TOPIC_REPLICATION
  value: "3"
# Tokens: the key sets every service trusts are signed by the user service's key.
- name: AUTH_KEYSET_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.secrets.userKeys.name }}
      key: {{ $root.Values.secrets.userKeys.keysetPublicKey }}
- name: AUTH_TOKEN_URL
  value: {{ printf "%s/token" (trimSuffix "/" $root.Values.publicUrl) | quote }}
{{- if eq $svc.name "user" }}
- name: USER_OPERATOR_PASSWORD_FILE
  value: {{ printf "%s/user/operator-password" $secrets }}
- name: USER_KEYSET_SIGNING_KEY_FILE
  value: {{ printf "%s/user/keyset-signing-key" $secrets }}
- name: USER_KEY_ENCRYPTION_KEY_FILE
  value: {{ printf "%s/user/key-encryption-key" $secrets }}
{{- end }}
# Behind the Gateway: the client's address from X-Forwarded-For, for the rate limits.
- name: FORWARDED_ALLOW_IPS
  value: {{ $root.Values.forwardedAllowIps | quote }}
- name: SHUTDOWN_GRACE_SECONDS
  value: {{ .config.shutdown.graceSeconds | quote }}
- name: LOG_FORMAT
  value: {{ .config.logFormat | quote }}
# Traces: OTLP over HTTP to the chart's OpenTelemetry Collector.
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ printf "http://%s-otel-collector:4318" $root.Release.Name | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $root.Values.tracing.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $root.Values.tracing.samplerArg | quote }}
{{- range $name, $value := .config.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The projected volume behind the *_FILE variables above. */}}
{{- define "shop.secretFiles" -}}
{{- $root := .root -}}
{{- $svc := .service -}}
{{- $database := include "shop.database" (dict "root" $root "name" $svc.name) -}}
projected:
  defaultMode: 0440
  sources:
    # Strimzi's User Operator writes the KafkaUser's password to a Secret of its name.
    - secret:
        name: {{ $svc.name }}
        items: [{key: password, path: kafka/password}]
    - secret:
        name: {{ printf "%s-cluster-ca-cert" (include "shop.kafka" $root) }}
        items: [{key: ca.crt, path: kafka/ca.crt}]
    # CloudNativePG writes the owner's password to <cluster>-app, its CA to <cluster>-ca.
    - secret:
        name: {{ printf "%s-app" $database }}
        items: [{key: password, path: database/password}]
    - secret:
        name: {{ printf "%s-ca" $database }}
        items: [{key: ca.crt, path: database/ca.crt}]
    {{- if eq $svc.name "user" }}
    - secret:
        name: {{ $root.Values.secrets.operatorPassword.name }}
        items: [{key: {{ $root.Values.secrets.operatorPassword.key }}, path: user/operator-password}]
    - secret:
        name: {{ $root.Values.secrets.userKeys.name }}
        items:
          - {key: {{ $root.Values.secrets.userKeys.keysetSigningKey }}, path: user/keyset-signing-key}
          - {key: {{ $root.Values.secrets.userKeys.keyEncryptionKey }}, path: user/key-encryption-key}
    {{- end }}
{{- end -}}
