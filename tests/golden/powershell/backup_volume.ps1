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
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'backup_volume'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # A verified copy of a volume's files: the disk is mounted read-only without a drive letter, its files
    # are zipped, then every entry is read back and compared by sha256 with the source before the archive
    # is renamed into place next to a manifest. Older backups of the same role beyond `keep` are removed.
    # The disk is always dismounted. The provider holds the host's mount lock while this runs.
    Add-Type -AssemblyName System.IO.Compression
    Add-Type -AssemblyName System.IO.Compression.FileSystem
    $Vm = 'NDXZOOM'
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-var.vhdx'
    $Role = 'var'
    $Label = 'Var'
    $DestPath = 'D:\Imaging\backups\NDXZOOM\20261121T193000Z-var.zip'
    $Keep = 5
    $manifestPath = $DestPath + '.manifest.json'
    $Result['path'] = $DestPath
    if ((Test-Path -LiteralPath $DestPath -PathType Leaf) -and (Test-Path -LiteralPath $manifestPath -PathType Leaf)) {
        $done = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($manifestPath))
        $Result['how'] = 'already backed up'
        $Result['files'] = $done.file_count
    }
    else {
        $destDir = Split-Path -Path $DestPath -Parent
        Initialize-ImagingFolder -Path $destDir
        $partial = $DestPath + '.partial'
        if (Test-Path -LiteralPath $partial) { Remove-Item -LiteralPath $partial -Force }
        $mounted = Mount-ImagingVolume -Path $Path -ReadOnly
        try {
            if ($mounted.Label -ne $Label) { throw "the volume on $Path is labelled '$($mounted.Label)', expected '$Label'" }
            $listing = Get-ImagingVolumeFiles -Root $mounted.Folder
            if ($listing.Skipped.Count -gt 0) {
                throw "cannot back up $Path completely: unreadable folders or links at $($listing.Skipped -join ', ')"
            }
            $hashes = [ordered]@{}
            $zip = [System.IO.Compression.ZipFile]::Open($partial, [System.IO.Compression.ZipArchiveMode]::Create)
            try {
                foreach ($file in $listing.Files) {
                    $hashes[$file.Rel] = Get-ImagingSha256 -Path $file.Full
                    [System.IO.Compression.ZipFileExtensions]::CreateEntryFromFile($zip, $file.Full, $file.Rel.Replace('\', '/')) | Out-Null
                }
            }
            finally { $zip.Dispose() }
        }
        finally {
            Dismount-ImagingVolume -Mounted $mounted
        }
        # Verify: the archive holds exactly the files listed, each with the hash its source had.
        $zip = [System.IO.Compression.ZipFile]::OpenRead($partial)
        try {
            if ($zip.Entries.Count -ne $hashes.Count) { throw "the backup holds $($zip.Entries.Count) files, the volume $($hashes.Count)" }
            foreach ($entry in $zip.Entries) {
                $rel = $entry.FullName.Replace('/', '\')
                $stream = $entry.Open()
                try { $entryHash = (Get-FileHash -InputStream $stream -Algorithm SHA256).Hash.ToLowerInvariant() }
                finally { $stream.Dispose() }
                if (-not $hashes.Contains($rel) -or $hashes[$rel] -ne $entryHash) { throw "the backup copy of $rel does not match the volume" }
            }
        }
        finally { $zip.Dispose() }
        $manifest = [ordered]@{
            vm = $Vm; role = $Role; label = $Label; source = $Path; file_count = $hashes.Count
            sha256 = Get-ImagingSha256 -Path $partial; files = $hashes; created_utc = [DateTime]::UtcNow.ToString('o')
        }
        Move-Item -LiteralPath $partial -Destination $DestPath -Force
        [System.IO.File]::WriteAllText($manifestPath, (ConvertTo-Json -InputObject $manifest -Depth 4),
            (New-Object System.Text.UTF8Encoding -ArgumentList $false))
        $Result['changed'] = $true
        $Result['how'] = 'backed up'
        $Result['files'] = $hashes.Count
    }
    # Retention: keep the newest $Keep complete backups of this role, never the one just made.
    $destDir = Split-Path -Path $DestPath -Parent
    $old = @(Get-ChildItem -LiteralPath $destDir -Filter ('*-' + $Role + '.zip') -File |
        Where-Object { $_.FullName -ne $DestPath -and (Test-Path -LiteralPath ($_.FullName + '.manifest.json')) } |
        Sort-Object -Property LastWriteTimeUtc -Descending | Select-Object -Skip ([Math]::Max($Keep - 1, 0)))
    $removed = New-Object System.Collections.Generic.List[string]
    foreach ($backup in $old) {
        Remove-Item -LiteralPath ($backup.FullName + '.manifest.json') -Force
        Remove-Item -LiteralPath $backup.FullName -Force
        $removed.Add($backup.Name)
        $Result['changed'] = $true
    }
    $Result['removed'] = @($removed.ToArray())
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
