{{- define "etcdbr.name" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcdbr.labels" -}}
app.kubernetes.io/name: etcd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "etcdbr.selector" -}}
app.kubernetes.io/name: etcd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etcdbr.clientScheme" -}}
{{- if .Values.etcd.tls.client.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{- define "etcdbr.peerScheme" -}}
{{- if .Values.etcd.tls.peer.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{- define "etcdbr.backupScheme" -}}
{{- if .Values.backup.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* member-name=peer-url for every member */}}
{{- define "etcdbr.initialCluster" -}}
{{- $name := include "etcdbr.name" . -}}
{{- $scheme := include "etcdbr.peerScheme" . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $members = append $members (printf "%s-%d=%s://%s-%d.%s-peer.%s.svc:%d" $name $i $scheme $name $i $name $.Release.Namespace (int $.Values.etcd.peerPort)) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{- define "etcdbr.credentialsEnv" -}}
{{- if eq .Values.backup.storageProvider "S3" -}}AWS_APPLICATION_CREDENTIALS
{{- else if eq .Values.backup.storageProvider "GCS" -}}GOOGLE_APPLICATION_CREDENTIALS
{{- else if eq .Values.backup.storageProvider "ABS" -}}AZURE_APPLICATION_CREDENTIALS
{{- else -}}{{- end -}}
{{- end -}}

{{/* the Secret holding the sidecar API's bearer token */}}
{{- define "etcdbr.tokenSecret" -}}
{{- .Values.backup.auth.token.existingSecret | default (printf "%s-api-token" (include "etcdbr.name" .)) -}}
{{- end -}}
