{{- define "qorch.name" -}}qorch-operator{{- end -}}
{{- define "qorch.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "qorch.labels" -}}
app.kubernetes.io/name: qorch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{/*
Labels that select the operator's pods (not the gateways', whose app.kubernetes.io/name differs).
*/}}
{{- define "qorch.operatorSelectorLabels" -}}
app.kubernetes.io/name: qorch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{/*
A quantum gateway's Deployment and Service name: <release>-gateway-<backend name>, at most 63
characters. Call with (dict "root" $ "backend" $backend).
*/}}
{{- define "qorch.gatewayName" -}}
{{- printf "%s-gateway-%s" .root.Release.Name .backend.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{/*
Labels that select one backend's gateway pods. app.kubernetes.io/name differs from the
operator's (qorch), so the operator Deployment's selector never matches gateway pods.
*/}}
{{- define "qorch.gatewaySelectorLabels" -}}
app.kubernetes.io/name: qorch-gateway
app.kubernetes.io/instance: {{ .root.Release.Name }}
qorch.io/backend: {{ .backend.name }}
{{- end -}}
{{- define "qorch.gatewayLabels" -}}
{{ include "qorch.gatewaySelectorLabels" . }}
app.kubernetes.io/component: quantum-gateway
app.kubernetes.io/part-of: qorch
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}
