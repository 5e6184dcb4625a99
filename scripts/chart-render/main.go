// chart-render renders a Helm chart with Go's text/template and the subset of Helm's functions
// the chart uses, for tests on machines without helm. Input on stdin: JSON
// {"Values":..., "Release":{...}, "Chart":{...}}; argument: the chart directory. Output: the
// manifests, each preceded by "---" and a "# Source:" line, as helm template prints them.
// Missing keys are errors (stricter than helm), so a typo in a template fails the test.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

func toInt(v interface{}) int {
	switch x := v.(type) {
	case int:
		return x
	case int64:
		return int(x)
	case float64:
		return int(x)
	case string:
		n, _ := strconv.Atoi(x)
		return n
	case bool:
		if x {
			return 1
		}
	}
	return 0
}

func empty(v interface{}) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.String, reflect.Map, reflect.Slice:
		return r.Len() == 0
	case reflect.Bool:
		return !r.Bool()
	case reflect.Float64:
		return r.Float() == 0
	case reflect.Int, reflect.Int64:
		return r.Int() == 0
	}
	return false
}

func scalar(v interface{}) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(x)
	case float64:
		if x == float64(int64(x)) {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'f', -1, 64)
	case int:
		return strconv.Itoa(x)
	case string:
		plain := x != "" && !strings.ContainsAny(x, ":#{}[],&*?|<>=!%@`'\"\n\\") &&
			strings.TrimSpace(x) == x && !strings.HasPrefix(x, "-")
		if _, err := strconv.ParseFloat(x, 64); err == nil {
			plain = false
		}
		switch strings.ToLower(x) {
		case "true", "false", "yes", "no", "on", "off", "null", "~":
			plain = false
		}
		if plain {
			return x
		}
		return strconv.Quote(x)
	}
	return fmt.Sprint(v)
}

// toYaml emits block YAML (sorted keys) for JSON-like values.
func toYaml(v interface{}) string {
	var b strings.Builder
	emit(&b, v, 0)
	return strings.TrimSuffix(b.String(), "\n")
}

func emit(b *strings.Builder, v interface{}, ind int) {
	pad := strings.Repeat(" ", ind)
	switch x := v.(type) {
	case map[string]interface{}:
		if len(x) == 0 {
			b.WriteString(pad + "{}\n")
			return
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			val := x[k]
			switch c := val.(type) {
			case map[string]interface{}:
				if len(c) == 0 {
					fmt.Fprintf(b, "%s%s: {}\n", pad, scalar(k))
					continue
				}
				fmt.Fprintf(b, "%s%s:\n", pad, scalar(k))
				emit(b, c, ind+2)
			case []interface{}:
				if len(c) == 0 {
					fmt.Fprintf(b, "%s%s: []\n", pad, scalar(k))
					continue
				}
				fmt.Fprintf(b, "%s%s:\n", pad, scalar(k))
				emit(b, c, ind)
			default:
				fmt.Fprintf(b, "%s%s: %s\n", pad, scalar(k), scalar(c))
			}
		}
	case []interface{}:
		if len(x) == 0 {
			b.WriteString(pad + "[]\n")
			return
		}
		for _, item := range x {
			switch c := item.(type) {
			case map[string]interface{}, []interface{}:
				var sub strings.Builder
				emit(&sub, c, ind+2)
				s := sub.String()
				fmt.Fprintf(b, "%s- %s", pad, strings.TrimPrefix(s, strings.Repeat(" ", ind+2)))
			default:
				fmt.Fprintf(b, "%s- %s\n", pad, scalar(c))
			}
		}
	default:
		fmt.Fprintf(b, "%s%s\n", pad, scalar(x))
	}
}

func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: chart-render CHART_DIR < context.json")
		os.Exit(2)
	}
	dir := os.Args[1]
	var ctx map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&ctx); err != nil {
		fmt.Fprintln(os.Stderr, "context:", err)
		os.Exit(2)
	}
	chartName := ctx["Chart"].(map[string]interface{})["Name"].(string)
	base := chartName + "/templates"
	ctx["Template"] = map[string]interface{}{"BasePath": base}
	root := template.New("root").Option("missingkey=error")
	funcs := template.FuncMap{
		"include": func(string, interface{}) (string, error) { return "", nil },
		"toYaml":  toYaml,
		"nindent": func(n int, s string) string { return "\n" + indent(n, s) },
		"indent":  indent,
		"quote":   func(v interface{}) string { return strconv.Quote(fmt.Sprint(v)) },
		"default": func(d interface{}, v ...interface{}) interface{} {
			if len(v) == 0 || empty(v[0]) {
				return d
			}
			return v[0]
		},
		"required": func(msg string, v interface{}) (interface{}, error) {
			if empty(v) {
				return nil, errors.New(msg)
			}
			return v, nil
		},
		"fail": func(msg string) (string, error) {
			return "", errors.New(msg)
		},
		"trunc": func(n int, s string) string {
			if len(s) > n {
				return s[:n]
			}
			return s
		},
		"trimSuffix": func(suf, s string) string { return strings.TrimSuffix(s, suf) },
		"list":       func(v ...interface{}) []interface{} { return v },
		"append":     func(l []interface{}, v interface{}) []interface{} { return append(append([]interface{}{}, l...), v) },
		"join": func(sep string, l []interface{}) string {
			s := make([]string, len(l))
			for i, x := range l {
				s[i] = fmt.Sprint(x)
			}
			return strings.Join(s, sep)
		},
		"until": func(n int) []int {
			r := make([]int, n)
			for i := range r {
				r[i] = i
			}
			return r
		},
		"int":       toInt,
		"int64":     func(v interface{}) int64 { return int64(toInt(v)) },
		"mul":       func(a interface{}, b interface{}) int { return toInt(a) * toInt(b) },
		"sha256sum": func(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) },
		"b64enc":    func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"randAlphaNum": func(n int) (string, error) {
			const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
			b := make([]byte, n)
			for i := range b {
				k, err := rand.Int(rand.Reader, big.NewInt(int64(len(letters))))
				if err != nil {
					return "", err
				}
				b[i] = letters[k.Int64()]
			}
			return string(b), nil
		},
		// no API server here, as with `helm template`: nothing exists yet
		"lookup": func(apiVersion, kind, namespace, name string) map[string]interface{} {
			return map[string]interface{}{}
		},
	}
	root.Funcs(funcs)
	files, _ := filepath.Glob(filepath.Join(dir, "templates", "*"))
	sort.Strings(files)
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := root.New(base + "/" + filepath.Base(f)).Parse(string(text)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	root.Funcs(template.FuncMap{"include": func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}})
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasPrefix(name, "_") || !strings.HasSuffix(name, ".yaml") {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, base+"/"+name, ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, doc := range strings.Split(buf.String(), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			fmt.Printf("---\n# Source: %s/%s\n%s\n", base, name, strings.Trim(doc, "\n"))
		}
	}
}
