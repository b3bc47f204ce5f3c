param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'health_check'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: reads the Apps version file, where each link points and
    # whether that is the mount folder of the volume with the right label, and the Settings manifest's digest,
    # checking the files it lists. Problems make the step fail, with all findings in the result.
    $Vm = 'NDXZOOM'
    $ExpectAppsVersion = '2026C3.0'
    $Links = @([ordered]@{'link' = 'C:\Instrument\Apps'; 'label' = 'Apps'}, [ordered]@{'link' = 'C:\Instrument\Settings'; 'label' = 'Settings'}, [ordered]@{'link' = 'C:\Instrument\Var'; 'label' = 'Var'}, [ordered]@{'link' = 'C:\data'; 'label' = 'Data'})
    $ExpectSettingsSha256 = '0d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e'
    $AppsVersionFile = 'version.txt'
    $SettingsManifest = '.imaging/manifest.json'
    # What the Apps volume must hold, from the image's manifest (absent: not checked). The guest computes the
    # same digests as the planner: sha256 over "path NUL value LF" for each file, paths lower-case with '/',
    # in ordinal order; value = the size, or (content check) the file's sha256.
    $ExpectApps = [ordered]@{'files' = 300; 'bytes' = 1234567; 'sizes_digest' = '1111111111111111111111111111111111111111111111111111111111111111'; 'content_digest' = '2222222222222222222222222222222222222222222222222222222222222222'}
    $request = ConvertTo-Json -Depth 4 -Compress -InputObject ([ordered]@{
        links = @($Links); apps_version_file = $AppsVersionFile; settings_manifest = $SettingsManifest
        apps_manifest = ($null -ne $ExpectApps); apps_content = ($null -ne $ExpectApps -and $ExpectApps.Contains('content_digest'))
    })
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $request -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $request = ConvertFrom-Json -InputObject $RequestJson
        $links = [ordered]@{}
        $byLabel = @{}
        foreach ($spec in @($request.links)) {
            $link = ([string]$spec.link).TrimEnd('\')
            $label = [string]$spec.label
            $byLabel[$label] = $link
            $entry = [ordered]@{ label = $label; target = $null; volume_label = $null }
            $item = Get-Item -LiteralPath $link -Force -ErrorAction SilentlyContinue
            if ($null -ne $item -and ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $entry.target = ([string]@($item.Target)[0]).TrimEnd('\')
                foreach ($volume in @(Get-Volume | Where-Object { $_.FileSystemLabel -eq $label })) {
                    $paths = @(($volume | Get-Partition).AccessPaths | ForEach-Object { ([string]$_).TrimEnd('\') })
                    if ($paths -contains $entry.target) { $entry.volume_label = $label }
                }
            }
            $links[$link] = $entry
        }
        $version = $null
        if ($byLabel.ContainsKey('Apps')) {
            $file = Join-Path -Path $byLabel['Apps'] -ChildPath ([string]$request.apps_version_file)
            if (Test-Path -LiteralPath $file -PathType Leaf) { $version = ([System.IO.File]::ReadAllText($file)).Trim() }
        }
        $apps = [ordered]@{ files = 0; bytes = 0; sizes_digest = $null; content_digest = $null }
        if ($request.apps_manifest -and $byLabel.ContainsKey('Apps')) {
            $root = $byLabel['Apps']
            $sizes = @{}
            $hashes = @{}
            foreach ($file in @(Get-ChildItem -LiteralPath $root -Recurse -File -Force)) {
                $rel = $file.FullName.Substring($root.Length + 1).Replace('\', '/').ToLowerInvariant()
                $sizes[$rel] = [string]$file.Length
                $apps.bytes += $file.Length
                if ($request.apps_content) { $hashes[$rel] = (Get-FileHash -LiteralPath $file.FullName -Algorithm SHA256).Hash.ToLowerInvariant() }
            }
            $apps.files = $sizes.Count
            $digest = {
                param([hashtable] $Entries)
                [string[]] $keys = @($Entries.Keys)
                [Array]::Sort($keys, [StringComparer]::Ordinal)
                $stream = New-Object System.IO.MemoryStream
                foreach ($key in $keys) {
                    $bytes = [System.Text.Encoding]::UTF8.GetBytes($key + [char]0 + $Entries[$key] + "`n")
                    $stream.Write($bytes, 0, $bytes.Length)
                }
                $sha = [System.Security.Cryptography.SHA256]::Create()
                (-join ($sha.ComputeHash($stream.ToArray()) | ForEach-Object { $_.ToString('x2') }))
            }
            $apps.sizes_digest = & $digest $sizes
            if ($request.apps_content) { $apps.content_digest = & $digest $hashes }
        }
        $settings = [ordered]@{ digest = $null; mismatched = @() }
        if ($byLabel.ContainsKey('Settings')) {
            $manifestPath = Join-Path -Path $byLabel['Settings'] -ChildPath (([string]$request.settings_manifest).Replace('/', '\'))
            if (Test-Path -LiteralPath $manifestPath -PathType Leaf) {
                $manifest = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($manifestPath))
                $settings.digest = [string]$manifest.digest
                $bad = New-Object System.Collections.Generic.List[string]
                foreach ($property in $manifest.files.PSObject.Properties) {
                    $file = Join-Path -Path $byLabel['Settings'] -ChildPath ($property.Name.Replace('/', '\'))
                    if (-not (Test-Path -LiteralPath $file -PathType Leaf) -or
                        (Get-FileHash -LiteralPath $file -Algorithm SHA256).Hash.ToLowerInvariant() -ne [string]$property.Value) {
                        $bad.Add($property.Name)
                    }
                }
                $settings.mismatched = @($bad.ToArray())
            }
        }
        ConvertTo-Json -InputObject ([ordered]@{ apps_version = $version; links = $links; settings = $settings; apps = $apps }) -Depth 8 -Compress
    }
    $guest = ConvertFrom-Json -InputObject ([string]$answer)
    $problems = New-Object System.Collections.Generic.List[string]
    if ($null -ne $ExpectAppsVersion -and [string]$guest.apps_version -ne $ExpectAppsVersion) {
        $problems.Add("Apps version is '$($guest.apps_version)', expected '$ExpectAppsVersion'")
    }
    if ($null -ne $ExpectApps) {
        if ([string]$guest.apps.sizes_digest -ne [string]$ExpectApps['sizes_digest']) {
            $problems.Add("the Apps volume does not match its image: $($guest.apps.files) files, $($guest.apps.bytes) bytes; the image has $($ExpectApps['files']) files, $($ExpectApps['bytes']) bytes")
        }
        elseif ($ExpectApps.Contains('content_digest') -and [string]$guest.apps.content_digest -ne [string]$ExpectApps['content_digest']) {
            $problems.Add("the Apps volume's content differs from its image (sizes match, a file's bytes do not)")
        }
    }
    $linkLabels = [ordered]@{}
    $linkTargets = [ordered]@{}
    foreach ($spec in @($Links)) {
        $link = ([string]$spec['link']).TrimEnd('\')
        $seen = $guest.links.PSObject.Properties[$link].Value
        $linkTargets[[string]$spec['link']] = $seen.target
        $linkLabels[[string]$spec['link']] = $null
        if ($null -eq $seen.target) { $problems.Add("$link is not a link") }
        elseif ($seen.volume_label -ne $spec['label']) { $problems.Add("$link points to $($seen.target), not to the volume labelled $($spec['label'])") }
        else { $linkLabels[[string]$spec['link']] = $spec['label'] }
    }
    if ($null -ne $ExpectSettingsSha256) {
        if ($guest.settings.digest -ne $ExpectSettingsSha256) {
            $problems.Add("Settings digest is '$($guest.settings.digest)', expected '$ExpectSettingsSha256'")
        }
        foreach ($name in @($guest.settings.mismatched)) { $problems.Add("Settings file $name differs from its manifest") }
    }
    $Result['apps_version'] = $guest.apps_version
    $Result['links'] = $linkLabels
    $Result['targets'] = $linkTargets
    $Result['settings'] = $guest.settings
    $Result['problems'] = @($problems.ToArray())
    if ($problems.Count -gt 0) { throw ('health check failed: ' + ($problems -join '; ')) }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
