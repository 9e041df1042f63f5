// A minimal OpenTelemetry Collector distribution for weft's tracing tests
// (waypoint/tests/tracing.rs): the upstream collector core (otelcol) with
// the OTLP receiver and one exporter of its own, `jsonfile`, which appends
// every batch of spans it receives to a file as one line of OTLP JSON (the
// encoding of the OTLP/HTTP JSON protocol, pdata's own marshaler), written
// and synced before the batch is acknowledged, so a test reads what the
// collector received as soon as it is there.
//
// scripts/build-otelcol.sh builds it into /var/cache/weft/otelcol-<key>/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

// jsonFileConfig is the `jsonfile` exporter's configuration.
type jsonFileConfig struct {
	// Path is the file the spans are appended to.
	Path string `mapstructure:"path"`
}

// Validate requires a path.
func (c *jsonFileConfig) Validate() error {
	if c.Path == "" {
		return errors.New("jsonfile: path is required")
	}
	return nil
}

// jsonFileExporter appends each batch of spans as one JSON line.
type jsonFileExporter struct {
	path string
	mu   sync.Mutex
	file *os.File
}

func (e *jsonFileExporter) Start(context.Context, component.Host) error {
	f, err := os.OpenFile(e.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("jsonfile: %w", err)
	}
	e.file = f
	return nil
}

func (e *jsonFileExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.file == nil {
		return nil
	}
	err := e.file.Close()
	e.file = nil
	return err
}

func (e *jsonFileExporter) Capabilities() consumer.Capabilities {
	return consumer.Capabilities{MutatesData: false}
}

func (e *jsonFileExporter) ConsumeTraces(_ context.Context, td ptrace.Traces) error {
	line, err := (&ptrace.JSONMarshaler{}).MarshalTraces(td)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.file == nil {
		return errors.New("jsonfile: not started")
	}
	if _, err := e.file.Write(line); err != nil {
		return err
	}
	return e.file.Sync()
}

func newJSONFileFactory() exporter.Factory {
	return exporter.NewFactory(
		component.MustNewType("jsonfile"),
		func() component.Config { return &jsonFileConfig{} },
		exporter.WithTraces(func(_ context.Context, _ exporter.Settings, cfg component.Config) (exporter.Traces, error) {
			return &jsonFileExporter{path: cfg.(*jsonFileConfig).Path}, nil
		}, component.StabilityLevelDevelopment),
	)
}

func components() (otelcol.Factories, error) {
	receivers, err := otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory())
	if err != nil {
		return otelcol.Factories{}, err
	}
	exporters, err := otelcol.MakeFactoryMap[exporter.Factory](newJSONFileFactory())
	if err != nil {
		return otelcol.Factories{}, err
	}
	return otelcol.Factories{
		Receivers: receivers,
		Exporters: exporters,
		Telemetry: otelconftelemetry.NewFactory(),
	}, nil
}

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "weft-otelcol",
			Description: "OpenTelemetry Collector (OTLP receiver, jsonfile exporter) for weft's tests",
			Version:     "weft",
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				// As upstream's distributions: `${VAR}` reads the environment.
				ProviderFactories: []confmap.ProviderFactory{
					fileprovider.NewFactory(),
					envprovider.NewFactory(),
				},
				DefaultScheme: "env",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		os.Exit(1)
	}
}
